"""Compiling a fitted model to ONNX and checking the result against the native model.

Compiled serving is an optimisation, never a requirement: `compile_verified` never raises.
It returns the graph only when it gives the native model's answers on the rows it is checked
on: the same labels on every row, probabilities within `PROBA_ATOL`, regression values within
`VALUE_ATOL` + `VALUE_RTOL` x |value|. Anything else (no converter for a step, a PythonModel,
a disagreement) is a verdict `refused: <reason>`, and the model is served natively.

What compiles: scikit-learn estimators and pipelines that skl2onnx converts (the trainer's
default preprocessing with any built-in estimator among them), with LightGBM's and XGBoost's
scikit-learn wrappers through onnxmltools' converters. Two rewrites keep the graph exact:

- numbers go in as float64, as scikit-learn computes; a tree ensemble gets them cast to
  float32 just before it, where scikit-learn casts too (trees compare float32 thresholds), so
  preprocessing rounds the same way on both sides;
- missing values: onnxruntime's Imputer takes float32 only, so a numeric imputer becomes
  IsNaN + Where in float64; a text imputer, whose missing value is NaN (a string tensor has
  none), is given `MISSING_TEXT`, which the feed puts where a value is missing.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from shared.compiled import (
    COLUMNS_KEY,
    LAYOUT_KEY,
    MATRIX,
    MISSING_TEXT,
    PER_COLUMN,
    CompiledModel,
)
from shared.schema import ModelSchema

log = logging.getLogger(__name__)

# Set on the run and the version: "verified", or "refused: <reason>".
VERDICT_TAG = "streamops.onnx"
# Where the graph is logged among the run's artifacts.
ONNX_ARTIFACT = "onnx/model.onnx"
VERIFIED = "verified"
PROBA_ATOL = 1e-4
VALUE_ATOL = 1e-4
VALUE_RTOL = 1e-5
OPSET = {"": 18, "ai.onnx.ml": 3}
_registered = threading.Lock()
_done: list[bool] = []


class NotCompiled(Exception):
    """This model cannot be compiled, or its graph disagrees with it: the reason."""


@dataclass(frozen=True)
class Verdict:
    """Whether a version serves compiled, and if not, why."""

    verified: bool
    reason: str = ""

    @property
    def text(self) -> str:
        return VERIFIED if self.verified else f"refused: {self.reason}"


def compile_verified(
    model: Any, schema: ModelSchema, rows: pd.DataFrame, classes: tuple[Any, ...] | None
) -> tuple[bytes | None, Verdict]:
    """`model` compiled and checked on `rows` (its input frame), with the verdict; no graph
    when it cannot be compiled or disagrees."""
    try:
        onnx = compile_model(model, schema)
        check(CompiledModel(onnx, classes), model, rows, classes)
    except NotCompiled as exc:
        return None, Verdict(False, str(exc))
    except Exception as exc:  # a converter's or the runtime's own failure
        return None, Verdict(False, f"{type(exc).__name__}: {_first_line(exc)}")
    return onnx, Verdict(True)


def compile_model(model: Any, schema: ModelSchema) -> bytes:
    """The ONNX graph of `model`, fed as shared.compiled describes; NotCompiled says why not."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    if not hasattr(model, "fit"):
        raise NotCompiled(f"{type(model).__name__} is not a scikit-learn-API model")
    _register_converters()
    _check_converters(model)
    rewritten = _rewrite(model)
    texts = {c.name for c in schema.columns if c.type == "str"}
    if any(c.type == "datetime" for c in schema.columns):
        raise NotCompiled("a datetime input column has no ONNX tensor type here")
    order = list(getattr(model, "feature_names_in_", schema.names))
    by_name = _selects_by_name(model)
    if not by_name and texts:
        raise NotCompiled("text columns go to a model that does not select them by name")
    if by_name:
        layout = PER_COLUMN
        inputs = [
            (n, StringTensorType([None, 1]) if n in texts else DoubleTensorType([None, 1]))
            for n in order
        ]
    else:
        layout = MATRIX
        inputs = [("X", DoubleTensorType([None, len(order)]))]
    final = _final(rewritten)
    options = {id(final): {"zipmap": False}} if hasattr(final, "classes_") else None
    try:
        with warnings.catch_warnings():
            # protobuf's note on the booleans skl2onnx writes (see pyproject.toml's pin).
            warnings.simplefilter("ignore", DeprecationWarning)
            graph = to_onnx(rewritten, initial_types=inputs, options=options, target_opset=OPSET)
    except Exception as exc:
        raise NotCompiled(f"no ONNX conversion: {type(exc).__name__}: {_first_line(exc)}") from exc
    for key, value in {LAYOUT_KEY: layout, COLUMNS_KEY: json.dumps(order)}.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    data: bytes = graph.SerializeToString()
    return data


def check(
    compiled: CompiledModel, native: Any, rows: pd.DataFrame, classes: tuple[Any, ...] | None
) -> None:
    """NotCompiled unless `compiled` answers `rows` as `native` does (see the module doc)."""
    if len(rows) == 0:
        raise NotCompiled("no rows to check the compiled model on")
    if classes is not None:
        want, got = np.asarray(native.predict_proba(rows)), compiled.predict_proba(rows)
        labels_native = np.asarray(classes).take(want.argmax(1))
        labels_compiled = np.asarray(classes).take(got.argmax(1))
        differ = int((labels_native != labels_compiled).sum())
        if differ:
            raise NotCompiled(f"labels differ on {differ} of {len(rows)} rows")
        gap = float(np.abs(want - got).max())
        if gap > PROBA_ATOL:
            raise NotCompiled(f"probabilities differ by up to {gap:.3g} (> {PROBA_ATOL})")
        return
    want = np.asarray(native.predict(rows), dtype=np.float64).reshape(len(rows), -1)
    got = np.asarray(compiled.predict(rows), dtype=np.float64).reshape(len(rows), -1)
    if want.shape != got.shape:
        raise NotCompiled(f"answers of shape {got.shape}, natively {want.shape}")
    if not np.allclose(got, want, rtol=VALUE_RTOL, atol=VALUE_ATOL, equal_nan=True):
        gap = float(np.nanmax(np.abs(want - got)))
        raise NotCompiled(f"values differ by up to {gap:.3g}")


def _check_converters(model: Any) -> None:
    """NotCompiled naming the first step skl2onnx has no converter for (a custom
    transformer from an entry point, say): a clearer reason than the converter's own."""
    from skl2onnx import get_model_alias

    for part in _parts(model):
        try:
            get_model_alias(type(part))
        except RuntimeError:
            raise NotCompiled(
                f"no ONNX converter for {type(part).__module__}.{type(part).__name__}"
            ) from None


def _final(model: Any) -> Any:
    return model.steps[-1][1] if hasattr(model, "steps") else model


def _selects_by_name(model: Any) -> bool:
    """Whether the model's first step picks its columns by name (a ColumnTransformer)."""
    from sklearn.compose import ColumnTransformer

    first = model.steps[0][1] if hasattr(model, "steps") else model
    return isinstance(first, ColumnTransformer)


def _rewrite(model: Any) -> Any:
    """A copy of `model` with the two rewrites of the module doc; `model` is left alone."""
    from skl2onnx.sklapi import CastTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    copied = copy.deepcopy(model)
    for part in _parts(copied):
        if isinstance(part, SimpleImputer) and _imputes_text(part):
            part.missing_values = MISSING_TEXT
    final = _final(copied)
    if not _is_tree_ensemble(final):
        return copied
    cast = ("streamops_float32", CastTransformer(dtype=np.float32).fit(np.zeros((1, 1))))
    if hasattr(copied, "steps"):
        return Pipeline([*copied.steps[:-1], cast, copied.steps[-1]])
    return Pipeline([cast, ("model", copied)])


def _imputes_text(imputer: Any) -> bool:
    stats = getattr(imputer, "statistics_", None)
    missing = imputer.missing_values
    is_nan = (isinstance(missing, float) and np.isnan(missing)) or missing is None
    return stats is not None and np.asarray(stats).dtype.kind == "O" and is_nan


def _parts(model: Any) -> list[Any]:
    """Every estimator inside `model` (pipelines, column transformers, unions), fitted ones."""
    found, pending = [], [model]
    while pending:
        part = pending.pop()
        found.append(part)
        for attr in ("steps", "transformers_", "transformer_list"):
            for item in getattr(part, attr, None) or ():
                if isinstance(item, tuple) and len(item) >= 2 and hasattr(item[1], "fit"):
                    pending.append(item[1])
    return found


def _is_tree_ensemble(model: Any) -> bool:
    kind = type(model)
    module = kind.__module__
    if module.startswith(("lightgbm", "xgboost")):
        return True
    return module.startswith(("sklearn.ensemble", "sklearn.tree")) and "Bagging" not in (
        kind.__name__
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _register_converters() -> None:
    """Teach skl2onnx the float64 imputer, and LightGBM's and XGBoost's wrappers where they
    are installed; once per process."""
    with _registered:
        if _done:
            return
        _register_imputer()
        _register_boosters()
        _done.append(True)


def _register_imputer() -> None:
    from skl2onnx import update_registered_converter
    from skl2onnx.algebra.onnx_ops import OnnxIsNaN, OnnxWhere
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer
    from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes
    from sklearn.impute import SimpleImputer

    def convert(scope: Any, operator: Any, container: Any) -> None:
        source = operator.inputs[0]
        if not isinstance(source.type, DoubleTensorType):
            convert_sklearn_imputer(scope, operator, container)
            return
        fill = np.asarray(operator.raw_operator.statistics_, dtype=np.float64)
        opset = container.target_opset
        isnan = OnnxIsNaN(source, op_version=opset)
        node = OnnxWhere(isnan, fill, source, op_version=opset, output_names=operator.outputs[:1])
        node.add_to(scope, container)

    update_registered_converter(
        SimpleImputer, "SklearnImputer", calculate_sklearn_imputer_output_shapes, convert
    )


def _register_boosters() -> None:
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    except ImportError:
        log.debug("lightgbm or onnxmltools not installed: LightGBM models serve natively")
    else:
        update_registered_converter(
            LGBMClassifier,
            "LightGbmLGBMClassifier",
            calculate_linear_classifier_output_shapes,
            convert_lightgbm,
            options=classifier_options,
        )
        update_registered_converter(
            LGBMRegressor,
            "LightGbmLGBMRegressor",
            calculate_linear_regressor_output_shapes,
            convert_lightgbm,
            options={"split": None},
        )
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor
    except ImportError:
        log.debug("xgboost or onnxmltools not installed: XGBoost models serve natively")
    else:
        update_registered_converter(
            XGBClassifier,
            "XGBoostXGBClassifier",
            calculate_linear_classifier_output_shapes,
            convert_xgboost,
            options=classifier_options,
        )
        update_registered_converter(
            XGBRegressor,
            "XGBoostXGBRegressor",
            calculate_linear_regressor_output_shapes,
            convert_xgboost,
        )
