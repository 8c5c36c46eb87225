"""Judging a model version on the labels that came back (shared/labels.py: labels joined to
the prediction log): the figures live quality exports, and retraining on decay reads."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Figures = dict[str, float]  # metric → value, plus "rows"


def judge(table: pa.Table) -> Figures:
    """The quality of the predictions in `table` (one version's joined labels)."""
    rows = table.num_rows
    figures: Figures = {"rows": float(rows)}
    if rows == 0:
        return figures
    classes = table["classes"][0].as_py()
    if classes is not None:
        truth = table["label"].to_numpy(zero_copy_only=False)
        said = table["prediction"].to_numpy(zero_copy_only=False)
        figures["accuracy"] = float(np.mean(truth == said))
        auc = _roc_auc(table, [str(c) for c in classes], truth)
        if auc is not None:
            figures["roc_auc"] = auc
        return figures
    truth_values = table["label_value"].to_numpy(zero_copy_only=False).astype(float)
    said_values = pc.cast(table["prediction_value"], pa.float64()).to_numpy(zero_copy_only=False)
    error = said_values - truth_values
    known = ~np.isnan(error)
    if known.any():
        figures["rmse"] = float(np.sqrt(np.mean(error[known] ** 2)))
        figures["mae"] = float(np.mean(np.abs(error[known])))
    return figures


def _roc_auc(table: pa.Table, classes: list[str], truth: np.ndarray) -> float | None:
    if len(classes) != 2 or table["probabilities"].null_count == table.num_rows:
        return None
    positive = truth == classes[1]
    if positive.all() or not positive.any():
        return None  # one class only: ROC AUC is undefined
    from sklearn.metrics import roc_auc_score

    scores = np.array([p[1] if p else np.nan for p in table["probabilities"].to_pylist()])
    keep = ~np.isnan(scores)
    return float(roc_auc_score(positive[keep], scores[keep]))


def windows(
    joined: pa.Table, *, window_rows: int, window_s: float, now: datetime
) -> dict[tuple[int, str], Figures]:
    """(version, window) → figures, for the windows `rows` and `time`."""
    found: dict[tuple[int, str], Figures] = {}
    if joined.num_rows == 0:
        return found
    joined = joined.sort_by([("labelled_at", "descending")])
    since = pa.scalar(now - timedelta(seconds=window_s), joined.schema.field("labelled_at").type)
    for version in pc.unique(joined["version"]).to_pylist():
        mine = joined.filter(pc.equal(joined["version"], version))
        found[(version, "rows")] = judge(mine.slice(0, window_rows))
        found[(version, "time")] = judge(mine.filter(pc.greater_equal(mine["labelled_at"], since)))
    return found
