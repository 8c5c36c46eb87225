"""A model compiled to ONNX, run by onnxruntime behind the face the serving code already calls:
`predict_proba` and `classes_` for a classifier, `predict` otherwise, on the frame the native
model would get (shared.schema.input_frame), or on an online batch's columns of plain values
as they arrived, with no DataFrame built (shared.schema.input_columns).

The graph's inputs say how it is fed (shared.compiling writes them): one `[N, 1]` tensor per
column (double for numbers and booleans, string for text) when the model starts by selecting
columns by name, else one `[N, k]` double matrix of the columns named in the graph's metadata.
A missing text value is fed as `MISSING_TEXT`, which the compiled imputers replace; a missing
number is NaN, as natively.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

# Metadata of the graph (shared.compiling sets it): the columns in the order fed, the layout.
COLUMNS_KEY = "streamops.columns"
LAYOUT_KEY = "streamops.layout"
PER_COLUMN = "columns"
MATRIX = "matrix"
# What a missing text value is fed as: strings cannot be NaN in a tensor. Not a value any
# client would send, so it never imputes one that was given.
MISSING_TEXT = "\x00streamops-missing"
STRING = "tensor(string)"


def session(onnx: bytes, threads: int = 1) -> Any:
    """An onnxruntime session on the CPU, `threads` intra-op threads and no inter-op pool: a
    replica is one core's worth of serving (more replicas for more cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    return ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])


class CompiledModel:
    """The ONNX graph of a fitted model, fed from a frame. `classes` (the native model's
    `classes_`) makes it a classifier: its second output is the probabilities, in that order."""

    def __init__(self, onnx: bytes, classes: tuple[Any, ...] | None, threads: int = 1) -> None:
        self.session = session(onnx, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.layout = meta.get(LAYOUT_KEY, PER_COLUMN)
        self.columns: tuple[str, ...] = tuple(json.loads(meta.get(COLUMNS_KEY, "[]")))
        self.inputs = [(i.name, i.type == STRING) for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        if classes is not None:
            self.classes_ = np.asarray(classes)

    def feed(self, frame: pd.DataFrame | Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """The graph's inputs from `frame`'s columns, or straight from columns of plain values
        (an online batch as it arrived: no DataFrame is built for it)."""
        if not isinstance(frame, pd.DataFrame):
            return self._feed_lists(frame)
        if self.layout == MATRIX:
            matrix = np.empty((len(frame), len(self.columns)), dtype=np.float64)
            for i, name in enumerate(self.columns):
                matrix[:, i] = _numbers(frame[name])
            return {self.inputs[0][0]: matrix}
        return {
            name: (_text(frame[name]) if text else _numbers(frame[name])).reshape(-1, 1)
            for name, text in self.inputs
        }

    def _feed_lists(self, columns: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        if self.layout == MATRIX:
            matrix = np.array([columns[n] for n in self.columns], dtype=np.float64).T
            return {self.inputs[0][0]: matrix}
        return {
            name: (_text_list(columns[name]) if text else _number_list(columns[name]))
            for name, text in self.inputs
        }

    def predict_proba(self, frame: pd.DataFrame | Mapping[str, Sequence[Any]]) -> Any:
        proba = self.session.run([self.outputs[1]], self.feed(frame))[0]
        return np.asarray(proba, dtype=np.float64)

    def predict(self, frame: pd.DataFrame | Mapping[str, Sequence[Any]]) -> Any:
        if hasattr(self, "classes_"):
            found: np.ndarray[Any, Any] = self.classes_.take(self.predict_proba(frame).argmax(1))
            return found
        values = np.asarray(self.session.run([self.outputs[0]], self.feed(frame))[0])
        return values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values


def _numbers(column: pd.Series[Any]) -> np.ndarray[Any, Any]:
    # None in an object column becomes NaN, as the native imputers see it.
    return np.asarray(column.to_numpy(dtype=np.float64, na_value=np.nan))


def _number_list(values: Sequence[Any]) -> np.ndarray[Any, Any]:
    # None becomes NaN, booleans 0/1, as in a float64 frame column.
    return np.array(values, dtype=np.float64).reshape(-1, 1)


def _text_list(values: Sequence[Any]) -> np.ndarray[Any, Any]:
    column = np.array([MISSING_TEXT if v is None else v for v in values], dtype=object)
    return column.reshape(-1, 1)


def _text(column: pd.Series[Any]) -> np.ndarray[Any, Any]:
    values = column.to_numpy(dtype=object)
    missing = pd.isna(values)
    if missing.any():
        values = np.where(missing, MISSING_TEXT, values)
    return np.asarray(values, dtype=object)
