"""Which runtime serves a loaded version: its verified ONNX graph through onnxruntime, or the
model's own library (docs/serving.md: compiled serving).

A graph the trainer verified on the hold-out rows is checked again here, on the warm-up rows,
against the native model it was loaded beside (a graph that does not belong to its model is
caught before it serves). A version with no verdict (registered outside streamops) is compiled
and verified now, on the same rows. Either way, anything short of agreement serves natively,
and the verdict says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from shared.compiled import CompiledModel
from shared.compiling import NotCompiled, Verdict, check, compile_verified
from shared.model_loading import LoadedModel
from shared.schema import ModelSchema

ONNX = "onnx"
NATIVE = "native"
RUNTIMES = (ONNX, NATIVE)
FORCED = "native: forced by settings (STREAMOPS_PREDICTOR_RUNTIME, _NATIVE_MODELS)"


@dataclass(frozen=True)
class Runtime:
    """What serves a version (`model`: the compiled one, or the native model) and why."""

    name: str  # onnx or native
    model: Any
    verdict: str


def choose(
    loaded: LoadedModel,
    native: Any,
    schema: ModelSchema,
    rows: pd.DataFrame,
    classes: tuple[Any, ...] | None,
    *,
    wanted: bool,
    threads: int = 1,
) -> Runtime:
    """The runtime for `native` (the loaded model, as served natively), checked on `rows`."""
    if not wanted:
        return Runtime(NATIVE, native, FORCED)
    if loaded.onnx is not None:
        try:
            compiled = CompiledModel(loaded.onnx, classes, threads)
            check(compiled, native, rows, classes)
        except NotCompiled as exc:
            return Runtime(NATIVE, native, f"refused: at load: {exc}")
        except Exception as exc:  # a graph onnxruntime cannot run
            return Runtime(NATIVE, native, f"refused: at load: {type(exc).__name__}: {exc}")
        return Runtime(ONNX, compiled, Verdict(True).text)
    if loaded.verdict is not None:  # refused when it was registered: not tried again
        return Runtime(NATIVE, native, loaded.verdict)
    if loaded.flavor == "python_function":
        return Runtime(NATIVE, native, "refused: a python_function model has no ONNX form")
    onnx, verdict = compile_verified(native, schema, rows, classes)
    if onnx is None:
        return Runtime(NATIVE, native, f"{verdict.text} (compiled at load)")
    return Runtime(ONNX, CompiledModel(onnx, classes, threads), f"{verdict.text} at load")
