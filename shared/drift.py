"""Drift: how far the live values of each feature have moved from the values a model learnt on.

At training, each feature's reference distribution is recorded with the model: the deciles of
the training rows for numbers (as bin edges), the most frequent values for categories, and the
share of training rows that fell in each bin. A bin for missing values is always there, and
categories have one for values the training rows never had. Serving sorts live rows into the
same bins over a sliding window and compares the shares with the population stability index:

    PSI = sum over bins of (live - reference) * ln(live / reference)

Shares are floored at 1e-4, so a bin that is empty on one side counts as rare, not infinite.
The usual reading: under 0.1 nothing moved, 0.1 to 0.25 a moderate shift, above 0.25 a real
one. Everything here is vectorised: sorting a batch into bins is one call per feature.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from shared.datasets import DatasetSpec

# Rows column by column: a DataFrame, or a dict of lists as predict requests carry them.
Columns = Mapping[str, Any] | pd.DataFrame

BINS = 10
MAX_CATEGORIES = 20
FLOOR = 1e-4


class FeatureReference(BaseModel):
    """One feature's bins and the share of training rows in each."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["numeric", "categorical"]
    edges: tuple[float, ...] = Field(
        default=(),
        description="numeric: ascending cut points; bin i holds edges[i-1] <= x < edges[i]",
    )
    categories: tuple[str, ...] = Field(default=(), description="categorical: the known values")
    shares: tuple[float, ...] = Field(
        description="share of training rows per bin: the value bins, then (categories) the "
        "unseen-value bin, then the missing-value bin"
    )

    # Built once (cached_property keeps them out of the fields and of equality): binning runs
    # on every online predict batch.
    @cached_property
    def _edges(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.asarray(self.edges, dtype="float64")

    @cached_property
    def _known(self) -> pd.Index:
        return pd.Index(self.categories, dtype=object)

    def bin_of(self, values: Any) -> np.ndarray[Any, np.dtype[np.int16]]:
        """The bin of every value (a list, an array or a Series), in one vectorised pass."""
        if self.kind == "numeric":
            return self.bin_numbers(_numbers(values))
        # A hash lookup (-1: not a known value), on plain objects: pandas' own Series and
        # string-array paths cost several times more per batch.
        objects = np.asarray(values, dtype=object)
        codes = self._known.get_indexer(pd.Index(objects, dtype=object, copy=False))
        found = np.where(codes < 0, len(self.categories), codes)
        found[pd.isna(objects)] = len(self.shares) - 1
        return found.astype(np.int16)

    def bin_numbers(
        self, numbers: np.ndarray[Any, np.dtype[np.float64]]
    ) -> np.ndarray[Any, np.dtype[np.int16]]:
        """The bin of every number (NaN: missing) of a numeric feature."""
        found = np.searchsorted(self._edges, numbers, side="right")
        found[np.isnan(numbers)] = len(self.shares) - 1
        return found.astype(np.int16)


def _numbers(values: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Values as float64, NaN for missing (None too); numbers in text are read, other text is
    missing. Plain numpy first: pandas' na_value path costs 30x more on a small batch."""
    try:
        numbers: np.ndarray[Any, np.dtype[np.float64]] = np.asarray(values, dtype="float64")
    except (TypeError, ValueError):
        coerced = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
        numbers = coerced.to_numpy(dtype="float64", na_value=np.nan)
    return numbers


class DriftReference(BaseModel):
    """What a model version was trained on, feature by feature."""

    model_config = ConfigDict(frozen=True)

    rows: int = Field(description="training rows the shares were counted on")
    features: tuple[FeatureReference, ...]


def reference_from(spec: DatasetSpec, frame: pd.DataFrame, bins: int = BINS) -> DriftReference:
    """The reference of `frame` (the training rows' features): numbers and booleans by
    quantile bins, strings by their most frequent values; other types are left out."""
    features = []
    for col in spec.feature_columns:
        if col.name not in frame:
            continue
        values = frame[col.name]
        if col.type in ("float", "int", "bool"):
            features.append(_numeric(col.name, values, bins))
        elif col.type == "str":
            features.append(_categorical(col.name, values))
    return DriftReference(rows=len(frame), features=tuple(features))


def _numeric(name: str, values: pd.Series, bins: int) -> FeatureReference:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    present = numbers[~np.isnan(numbers)]
    distinct = np.unique(present)
    if len(distinct) <= bins:  # few values (booleans, small counts): one bin each
        edges = tuple(float(e) for e in distinct[1:])
    else:
        quantiles = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])
        edges = tuple(float(e) for e in np.unique(quantiles))
    unshared = FeatureReference(
        name=name, kind="numeric", edges=edges, shares=(0.0,) * (len(edges) + 2)
    )
    return unshared.model_copy(update={"shares": _shares(unshared, values)})


def _categorical(name: str, values: pd.Series) -> FeatureReference:
    counts = values.dropna().astype("string").value_counts()
    categories = tuple(str(v) for v in counts.index[:MAX_CATEGORIES])
    unshared = FeatureReference(
        name=name, kind="categorical", categories=categories, shares=(0.0,) * (len(categories) + 2)
    )
    return unshared.model_copy(update={"shares": _shares(unshared, values)})


def _shares(feature: FeatureReference, values: pd.Series) -> tuple[float, ...]:
    counts = np.bincount(feature.bin_of(values), minlength=len(feature.shares))
    total = counts.sum()
    return tuple(float(c / total) if total else 0.0 for c in counts)


def psi(reference: Sequence[float], counts: np.ndarray[Any, Any]) -> float:
    """The population stability index of live bin `counts` against reference shares."""
    total = counts.sum()
    if total == 0:
        return float("nan")
    live = np.maximum(counts / total, FLOOR)
    expected = np.maximum(np.asarray(reference, dtype="float64"), FLOOR)
    return float(np.sum((live - expected) * np.log(live / expected)))


def decile_psi(before: Any, after: Any) -> float:
    """The PSI of values `after` against values `before`, in the deciles of `before` (NaNs left
    out): how far one set of scores or predictions moved from another."""
    ref = np.asarray(before, dtype="float64")
    ref = ref[~np.isnan(ref)]
    live = np.asarray(after, dtype="float64")
    live = live[~np.isnan(live)]
    edges = np.unique(np.quantile(ref, np.linspace(0.1, 0.9, 9)))
    bins = len(edges) + 1
    shares = np.bincount(np.searchsorted(edges, ref), minlength=bins) / len(ref)
    return psi(shares.tolist(), np.bincount(np.searchsorted(edges, live), minlength=bins))


class Window:
    """The bins of the last `size` live rows of one model version. Thread-safe: predictions
    write from the predict thread, scrapes read from the metrics server's.

    Rows given as lists (online batches, often of a few rows) are gathered until `gather`
    rows are waiting, then binned together: binning costs a few numpy calls per feature
    whatever the rows, which for a compiled model was more than the prediction itself. What
    waits is binned before any reading (`rows`, `psi`), so readers never see it missing."""

    def __init__(self, reference: DriftReference, size: int, gather: int = 256) -> None:
        self.reference = reference
        self.size = size
        self.gather = gather
        self._bins = np.zeros((size, len(reference.features)), dtype=np.int16)
        self._next = 0
        self._filled = 0
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Any]] = {f.name: [] for f in reference.features}
        self._waiting_rows = 0
        self._waiting_lock = threading.Lock()

    def observe(self, columns: Columns) -> None:
        """Count rows given column by column (a DataFrame, or a dict of lists as requests
        carry them: taking a column out of a DataFrame costs more than binning it)."""
        features = self.reference.features
        if not features:
            return
        if isinstance(columns, pd.DataFrame):
            self._count(columns)
            return
        given = [columns[f.name] for f in features]  # a missing feature raises before any change
        with self._waiting_lock:
            for f, values in zip(features, given, strict=True):
                self._waiting[f.name].extend(values)
            self._waiting_rows += len(given[0])
            if self._waiting_rows < self.gather:
                return
            waiting = self._take_waiting()
        self._count(waiting)

    def _take_waiting(self) -> dict[str, list[Any]]:
        waiting = self._waiting
        self._waiting = {f.name: [] for f in self.reference.features}
        self._waiting_rows = 0
        return waiting

    def _flush(self) -> None:
        with self._waiting_lock:
            if not self._waiting_rows:
                return
            waiting = self._take_waiting()
        self._count(waiting)

    def _count(self, columns: Columns) -> None:
        binned = [f.bin_of(columns[f.name]) for f in self.reference.features]
        found = np.column_stack(binned)[-self.size :]
        if not len(found):
            return
        with self._lock:
            end = self._next + len(found)
            if end <= self.size:
                self._bins[self._next : end] = found
            else:  # wraps around the ring
                first = self.size - self._next
                self._bins[self._next :] = found[:first]
                self._bins[: end - self.size] = found[first:]
            self._next = end % self.size
            self._filled = min(self.size, self._filled + len(found))

    @property
    def rows(self) -> int:
        self._flush()
        return self._filled

    def psi(self) -> dict[str, float]:
        """PSI per feature over the rows in the window."""
        self._flush()
        with self._lock:
            window = self._bins[: self._filled].copy()
        return {
            f.name: psi(f.shares, np.bincount(window[:, i], minlength=len(f.shares)))
            for i, f in enumerate(self.reference.features)
        }
