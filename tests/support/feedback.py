"""The prediction log and its labels as the loggers and the label joiners write them, for
tests that start from what production answered (no replica, no broker)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from shared import labels, predlog
from shared.datasets import DatasetSpec
from shared.events import Label, LabelsArrived, PredictionsLogged
from tests.support.models import churn_features


def answered(
    root: Path, model: str, spec: DatasetSpec, ids: list[str], at: datetime, seed: int
) -> None:
    """Requests of one churn row each that `model` v1 answered at `at`."""
    frame = churn_features(len(ids), seed=seed)
    event = PredictionsLogged(
        occurred_at=at,
        model_name=model,
        model_version=1,
        latency_ms=1.0,
        requests=[(i, 1) for i in ids],
        # Missing values as the gateway passes them on: None (it refuses NaN).
        features={
            c.name: frame[c.name].astype(object).where(frame[c.name].notna(), None).tolist()
            for c in spec.feature_columns
        },
        predictions=[0] * len(ids),
    )
    entry = f"{int(at.timestamp() * 1000)}-{seed}"
    predlog.write_part(
        predlog.online_part(root, model, at.date(), entry, entry),
        predlog.online_table([(event, entry)]),
    )


def labelled(root: Path, model: str, truth: dict[str, int], at: datetime) -> None:
    """Labels (arrived at `at`) for logged requests, joined to their answers."""
    arrived = LabelsArrived(
        occurred_at=at,
        model_name=model,
        labels=[Label(request_id=i, label=v) for i, v in truth.items()],
    )
    entry = f"{int(at.timestamp() * 1000)}-0"
    logged = predlog.read_log(root, model)
    matched, _ = labels.join(labels.label_table([(arrived, entry)]), logged)
    predlog.write_part(labels.joined_part(root, model, at.date(), entry, entry), matched)
