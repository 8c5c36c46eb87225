"""What a model's answer looks like, whatever the model: class probabilities for a classifier
that gives them, else what `predict` returns, made JSON-safe.

- a 1-D array, a Series or a one-column frame: one value per row;
- a frame of several columns: one object `{column: value}` per row;
- a 2-D array: one list per row.

Batch scoring writes the same answer as columns (`output_columns`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from predictor.cache import Served

# numpy kinds whose `tolist()` is already plain Python numbers, booleans or text.
PLAIN_KINDS = "biufU"


@dataclass(frozen=True)
class Prediction:
    model_name: str
    model_version: int
    predictions: list[Any]
    probabilities: list[list[float]] | None
    classes: tuple[Any, ...] | None


@dataclass(frozen=True)
class Output:
    """A model's raw answer, by shape: one column (`values`), named columns, or a matrix."""

    values: np.ndarray[Any, Any] | pd.Series[Any] | None = None
    columns: pd.DataFrame | None = None
    matrix: np.ndarray[Any, Any] | None = None


def gives_probabilities(model: Any) -> bool:
    return hasattr(model, "predict_proba") and hasattr(model, "classes_")


def probabilities(served: Served, features: Any) -> tuple[np.ndarray[Any, Any], Any]:
    """(predicted classes, probabilities) from one predict_proba call: the prediction is the
    most probable class, as scikit-learn's own predict does, so the work is not done twice."""
    assert served.classes is not None
    proba = np.asarray(served.model.predict_proba(features))
    return np.asarray(served.classes).take(proba.argmax(axis=1)), proba


def output(raw: Any) -> Output:
    """`raw` (what `predict` returned) sorted by shape."""
    if isinstance(raw, pd.DataFrame):
        return Output(values=raw.iloc[:, 0]) if raw.shape[1] == 1 else Output(columns=raw)
    if isinstance(raw, pd.Series):
        return Output(values=raw)
    array = np.asarray(raw)
    if array.ndim == 2 and array.shape[1] == 1:
        return Output(values=array[:, 0])
    if array.ndim == 2:
        return Output(matrix=array)
    if array.ndim == 1:
        return Output(values=array)
    raise TypeError(f"predict returned an array of shape {array.shape}; streamops serves 1-D/2-D")


def plain(values: Any) -> list[Any]:
    """One column of values as JSON-safe Python values (numpy scalars to Python)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in PLAIN_KINDS:
        listed: list[Any] = values.tolist()  # the common case, with no Series built
        return listed
    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in PLAIN_KINDS:
        found: list[Any] = series.to_numpy().tolist()
        return found
    # Objects, datetimes, nullable types: pandas' JSON writer knows them all.
    decoded: list[Any] = json.loads(
        series.to_json(orient="records", date_format="iso", double_precision=15)
    )
    return decoded


def answers(out: Output) -> list[Any]:
    """One JSON-safe answer per row."""
    if out.values is not None:
        return plain(out.values)
    if out.columns is not None:
        names = [str(c) for c in out.columns.columns]
        cols = [plain(out.columns[c]) for c in out.columns.columns]
        return [dict(zip(names, row, strict=True)) for row in zip(*cols, strict=True)]
    assert out.matrix is not None
    if out.matrix.dtype.kind in PLAIN_KINDS:
        rows: list[Any] = out.matrix.tolist()
        return rows
    return [list(row) for row in zip(*(plain(col) for col in out.matrix.T), strict=True)]


def output_columns(out: Output) -> dict[str, Any]:
    """The answer as output columns of a scored file: `prediction`, or `prediction_<column>`
    per column of a frame, or `prediction_<i>` per column of a matrix."""
    if out.values is not None:
        return {"prediction": np.asarray(out.values)}
    if out.columns is not None:
        return {f"prediction_{c}": out.columns[c].to_numpy() for c in out.columns.columns}
    assert out.matrix is not None
    return {f"prediction_{i}": out.matrix[:, i] for i in range(out.matrix.shape[1])}


def predict_with(served: Served, features: Any) -> Prediction:
    """The answer of `served` for `features` (its input frame; or, for a compiled model, its
    input columns as plain lists), in one model call."""
    if served.classes is not None:
        predicted, proba = probabilities(served, features)
        return Prediction(
            served.name,
            served.version,
            plain(predicted),
            np.asarray(proba, dtype=float).tolist(),
            served.classes,
        )
    out = output(served.model.predict(features))
    return Prediction(served.name, served.version, answers(out), None, None)
