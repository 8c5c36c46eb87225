"""Compiling a freshly trained model for serving (shared/compiling.py): checked on the hold-out
rows it was just judged on, so the verdict covers data the model did not see in training."""

from __future__ import annotations

import logging
import time
from typing import Any

from shared.compiling import Verdict, compile_verified
from shared.datasets import DatasetSpec, spec_schema
from trainer.entry_points import PYFUNC
from trainer.training import Trained

log = logging.getLogger(__name__)


def compile_trained(spec: DatasetSpec, trained: Trained) -> tuple[bytes | None, Verdict]:
    """The ONNX graph of `trained` and its verdict; never raises: a model that does not
    compile is served natively, and its training goes on."""
    if trained.flavor == PYFUNC:
        return None, Verdict(False, "an mlflow.pyfunc.PythonModel has no ONNX form")
    started = time.perf_counter()
    model = trained.pipeline
    onnx, verdict = compile_verified(
        model, spec_schema(spec), trained.split.x_test, _classes(model)
    )
    log.info(
        "%s: compiled to ONNX in %.1f s: %s",
        spec.model_name,
        time.perf_counter() - started,
        verdict.text,
    )
    return onnx, verdict


def _classes(model: Any) -> tuple[Any, ...] | None:
    if hasattr(model, "predict_proba") and hasattr(model, "classes_"):
        return tuple(model.classes_)
    return None
