"""`streamops replay MODEL --version N --since T`: the logged requests of a window scored again
by another version, the offline half of a shadow test (docs/feedback.md).

Reports how often the other version agrees with what production answered (the share of rows
with the same label, or the mean absolute difference for regressors), and, on the rows that
have labels, the live metrics of both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shared import labels, predlog
from shared.quality import Figures, judge

# A version's answers for a frame of features: the predictions and, for classifiers, the
# probabilities (rows by classes, in `classes` order) and the classes.
Answers = tuple[list[Any], list[list[float]] | None, list[Any] | None]
Predict = Callable[[pd.DataFrame], Answers]


@dataclass(frozen=True)
class Replayed:
    rows: int
    skipped: int  # logged rows without features (not kept for this model): not replayed
    agreement: float | None  # classifiers: share of equal labels
    mean_abs_difference: float | None  # regressors
    labelled: int
    production: Figures = field(default_factory=dict)  # what production scored on them
    replayed: Figures = field(default_factory=dict)  # what the other version scores


def replay(
    store_root: Path,
    model: str,
    predict: Predict,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Replayed:
    """Score the window's logged online rows with `predict` and compare."""
    table = predlog.read_log(store_root, model, since=since, until=until)
    if table.num_rows == 0 or "features" not in table.column_names:
        return Replayed(0, table.num_rows, None, None, 0)
    kept = table.filter(pc.is_valid(table["features"]))
    frame = _features(kept["features"])
    predictions, probabilities, classes = predict(frame)
    said = labels.as_text(kept["prediction"])
    again = labels.as_text(pa.chunked_array([pa.array(predictions)]))
    agreement = mad = None
    if kept["classes"].null_count < kept.num_rows:  # classifiers
        agreement = float(np.mean(np.asarray(said) == np.asarray(again)))
    else:
        mad = float(np.mean(np.abs(np.asarray(predictions, float) - _numbers(kept["prediction"]))))
    ours = kept.select(["request_id", "row", "version", "prediction", "probabilities", "classes"])
    ours = ours.append_column("time", kept["time"])
    theirs = _as_logged(ours, predictions, probabilities, classes)
    production, replayed, labelled = _labelled(store_root, model, ours, theirs)
    return Replayed(
        kept.num_rows,
        table.num_rows - kept.num_rows,
        agreement,
        mad,
        labelled,
        production,
        replayed,
    )


def _features(column: pa.ChunkedArray) -> pd.DataFrame:
    struct = column.combine_chunks()
    kind: Any = struct.type
    return pd.DataFrame(
        {kind.field(i).name: struct.field(i).to_pandas() for i in range(kind.num_fields)}
    )


def _numbers(column: pa.ChunkedArray) -> np.ndarray[Any, Any]:
    return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=float)


def _as_logged(
    ours: pa.Table,
    predictions: list[Any],
    probabilities: list[list[float]] | None,
    classes: list[Any] | None,
) -> pa.Table:
    """The other version's answers in the shape of the log (for the label join)."""
    count = ours.num_rows
    names = None if classes is None else [str(c) for c in classes]
    return pa.table(
        {
            "request_id": ours["request_id"],
            "row": ours["row"],
            "version": ours["version"],
            "prediction": pa.array(predictions),
            "probabilities": pa.array(
                probabilities if probabilities is not None else [None] * count,
                pa.list_(pa.float64()),
            ),
            "classes": pa.array([names] * count, pa.list_(pa.string())),
            "time": ours["time"],
        }
    )


def _labelled(
    store_root: Path, model: str, ours: pa.Table, theirs: pa.Table
) -> tuple[Figures, Figures, int]:
    """Both versions judged on the window's rows that have labels."""
    joined = labels.read_joined(store_root, model)
    if joined.num_rows == 0:
        return {}, {}, 0
    truth = joined.select(
        ["request_id", "row", "label", "label_value", "labelled_at", "label_entry"]
    )
    production, _ = labels.join(truth, ours)
    replayed, _ = labels.join(truth, theirs)
    return judge(production), judge(replayed), production.num_rows


def report(replayed: Replayed, model: str, version: int) -> list[str]:
    """The lines `streamops replay` prints."""
    lines = [f"{model}: {replayed.rows} logged rows replayed with v{version}"]
    if replayed.skipped:
        lines.append(f"  {replayed.skipped} rows skipped: logged without their features")
    if replayed.agreement is not None:
        lines.append(f"  agreement with production: {replayed.agreement:.4f}")
    if replayed.mean_abs_difference is not None:
        lines.append(f"  mean absolute difference: {replayed.mean_abs_difference:.6g}")
    if replayed.labelled:
        lines.append(f"  on {replayed.labelled} labelled rows:")
        for metric in sorted(set(replayed.production) | set(replayed.replayed)):
            if metric == "rows":
                continue
            was = replayed.production.get(metric, float("nan"))
            now = replayed.replayed.get(metric, float("nan"))
            lines.append(f"    {metric}: production {was:.4f}, v{version} {now:.4f}")
    else:
        lines.append("  no labels for these rows yet: no live metrics")
    return lines
