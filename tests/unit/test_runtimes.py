"""Which runtime serves a loaded version: its verified graph, or the native model with the
reason, and never a graph that disagrees with the model it was loaded beside."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from predictor.runtimes import FORCED, choose
from shared.compiled import CompiledModel
from shared.compiling import compile_verified
from shared.model_loading import LoadedModel
from shared.schema import Column, ModelSchema

SCHEMA = ModelSchema(
    model_name="m",
    source="signature",
    columns=(Column(name="a", type="float"), Column(name="b", type="float")),
)


def _rows(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})


def _forest(seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    rows = _rows(seed=seed)
    label = (rows["a"] + rows["b"] * seed > 0).astype(int)
    return RandomForestClassifier(n_estimators=8, random_state=seed).fit(rows, label)


def _loaded(
    model: Any, onnx: bytes | None = None, verdict: str | None = None, flavor: str = "sklearn"
) -> LoadedModel:
    return LoadedModel(flavor, None, model, False, None, verdict, onnx)


def _graph(model: Any) -> bytes:
    onnx, verdict = compile_verified(model, SCHEMA, _rows(), (0, 1))
    assert onnx is not None, verdict.reason
    return onnx


def test_a_verified_graph_serves_compiled() -> None:
    model = _forest(1)
    chosen = choose(
        _loaded(model, _graph(model), "verified"), model, SCHEMA, _rows(), (0, 1), wanted=True
    )
    assert chosen.name == "onnx"
    assert isinstance(chosen.model, CompiledModel)
    assert chosen.verdict == "verified"


def test_settings_force_native() -> None:
    model = _forest(1)
    chosen = choose(
        _loaded(model, _graph(model), "verified"), model, SCHEMA, _rows(), (0, 1), wanted=False
    )
    assert (chosen.name, chosen.model, chosen.verdict) == ("native", model, FORCED)


def test_a_graph_of_another_model_falls_back_to_native() -> None:
    model, other = _forest(1), _forest(3)
    chosen = choose(
        _loaded(model, _graph(other), "verified"), model, SCHEMA, _rows(), (0, 1), wanted=True
    )
    assert chosen.name == "native"
    assert chosen.model is model
    assert chosen.verdict.startswith("refused: at load: ")
    assert "differ" in chosen.verdict


def test_a_refusal_recorded_at_registration_is_kept() -> None:
    model = _forest(1)
    verdict = "refused: no ONNX conversion: FunctionTransformer is not supported"
    chosen = choose(_loaded(model, None, verdict), model, SCHEMA, _rows(), (0, 1), wanted=True)
    assert (chosen.name, chosen.verdict) == ("native", verdict)


def test_a_version_registered_elsewhere_is_compiled_at_load() -> None:
    model = _forest(2)
    chosen = choose(_loaded(model), model, SCHEMA, _rows(), (0, 1), wanted=True)
    assert chosen.name == "onnx"
    assert chosen.verdict == "verified at load"
    rows = _rows(50, seed=9)
    assert (chosen.model.predict(rows) == model.predict(rows)).all()


def test_a_pyfunc_model_serves_natively() -> None:
    model = _forest(1)
    chosen = choose(
        _loaded(model, flavor="python_function"), model, SCHEMA, _rows(), (0, 1), wanted=True
    )
    assert chosen.name == "native"
    assert "python_function" in chosen.verdict
