"""Labels joined to logged predictions, and live quality over the two windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from shared import labels, predlog
from shared.events import Label, LabelsArrived, LabelValue
from shared.quality import judge, windows

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


def _logged(predictions: list[object], probabilities: list[list[float]] | None = None) -> pa.Table:
    count = len(predictions)
    classes = [["0", "1"]] * count if probabilities is not None else [None] * count
    return pa.table(
        {
            "request_id": pa.array([f"r{i}" for i in range(count)]),
            "row": pa.array([0] * count, pa.int64()),
            "version": pa.array([1] * count, pa.int64()),
            "prediction": pa.array(predictions),
            "probabilities": pa.array(
                probabilities if probabilities is not None else [None] * count,
                pa.list_(pa.float64()),
            ),
            "classes": pa.array(classes, pa.list_(pa.string())),
            "time": pa.array([NOW] * count, predlog.TIME),
        }
    )


def _labels(values: list[LabelValue], ids: list[str] | None = None, at: datetime = NOW) -> pa.Table:
    ids = ids or [f"r{i}" for i in range(len(values))]
    event = LabelsArrived(
        model_name="m",
        labels=[Label(request_id=i, label=v) for i, v in zip(ids, values, strict=True)],
        occurred_at=at,
    )
    return labels.label_table([(event, "9-0")])


def test_labels_and_predictions_compare_as_text_whatever_their_types() -> None:
    assert [labels.canonical(v) for v in (1, 1.0, True, "yes", 2.5)] == [
        "1",
        "1",
        "true",
        "yes",
        "2.5",
    ]
    matched, unmatched = labels.join(_labels([1, 0, 1, 1], ["r0", "r1", "r2", "nope"]),
                                     _logged([1, 1, 1.0]))  # fmt: skip
    assert matched.num_rows == 3
    assert matched["prediction"].to_pylist() == ["1", "1", "1"]
    assert unmatched["request_id"].to_pylist() == ["nope"]


def test_a_request_answered_twice_is_judged_on_its_latest_answer() -> None:
    logged = pa.concat_tables([_logged([0]), _logged([1])])
    later = logged["time"].to_pylist()
    later[1] = NOW + timedelta(seconds=5)
    logged = logged.set_column(6, "time", pa.array(later, predlog.TIME))
    matched, _ = labels.join(_labels([1]), logged)
    assert matched["prediction"].to_pylist() == ["1"]
    assert labels.latest(pa.concat_tables([_labels([0]), _labels([1], at=NOW + timedelta(1))]),
                         "labelled_at")["label"].to_pylist() == ["1"]  # fmt: skip


def test_classifier_quality_is_accuracy_and_roc_auc() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 200)
    scores = np.clip(truth * 0.3 + rng.random(200) * 0.7, 0, 1)
    predicted = (scores > 0.5).astype(int)
    logged = _logged(predicted.tolist(), [[1 - s, s] for s in scores])
    matched, _ = labels.join(_labels(truth.tolist()), logged)
    figures = judge(matched)
    assert figures["rows"] == 200
    assert figures["accuracy"] == pytest.approx(float(np.mean(truth == predicted)))
    assert figures["roc_auc"] == pytest.approx(roc_auc_score(truth, scores))
    one_class, _ = labels.join(_labels([1, 1]), _logged([1, 0], [[0.2, 0.8], [0.6, 0.4]]))
    assert "roc_auc" not in judge(one_class)  # undefined with one class


def test_regressor_quality_is_rmse_and_mae() -> None:
    matched, _ = labels.join(_labels([1.0, 2.0, 4.0]), _logged([1.5, 2.0, 3.0]))
    figures = judge(matched)
    assert figures["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1) / 3))
    assert figures["mae"] == pytest.approx(0.5)
    assert "accuracy" not in figures


def test_the_windows_are_a_version_s_last_rows_and_its_recent_rows() -> None:
    old = _labels([0] * 5, [f"r{i}" for i in range(5)], at=NOW - timedelta(hours=2))
    new = _labels([1] * 5, [f"r{i}" for i in range(5, 10)], at=NOW)
    matched, _ = labels.join(pa.concat_tables([old, new]), _logged([1] * 10, [[0.3, 0.7]] * 10))
    found = windows(matched, window_rows=6, window_s=3600, now=NOW)
    assert found[(1, "rows")]["rows"] == 6
    assert found[(1, "rows")]["accuracy"] == pytest.approx(5 / 6)
    assert found[(1, "time")] == {"rows": 5.0, "accuracy": 1.0}


LABELS_SPEC = {
    "name": "churn-labels",
    "target": "churned",
    "columns": [
        {"name": "request_id", "type": "str"},
        {"name": "row", "type": "int", "nullable": True},
        {"name": "churned", "type": "int", "allowed": [0, 1]},
    ],
    "labels": {"model": "churn", "row": "row"},
}


def test_a_labels_dataset_becomes_events_of_at_most_ten_thousand_labels() -> None:
    from shared.datasets import DatasetSpec
    from shared.labels import label_events

    spec = DatasetSpec.model_validate(LABELS_SPEC)
    count = 25_000
    table = pa.table(
        {
            "request_id": [f"r{i}" for i in range(count)],
            "row": [i % 3 if i % 5 else None for i in range(count)],
            "churned": [i % 2 for i in range(count)],
        }
    )
    events = label_events(spec, table, version=4, correlation_id="c")
    assert [len(e.labels) for e in events] == [10_000, 10_000, 5_000]
    assert {e.model_name for e in events} == {"churn"}
    assert events[0].labels[1] == Label(request_id="r1", row=1, label=1)
    assert events[0].labels[0].row == 0  # a missing row is the request's first
    again = label_events(spec, table, version=4, correlation_id="c")
    assert [e.event_id for e in again] == [e.event_id for e in events]  # copies, not new ones


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            {
                "training": {
                    "task": "classification",
                    "metric": "accuracy",
                    "estimator": {"name": "LogisticRegression"},
                }
            },
            "trains nothing",
        ),
        ({"labels": {"model": "churn", "request_id": "rid"}}, "lacks"),
    ],
)
def test_a_labels_spec_names_its_columns_and_trains_nothing(
    change: dict[str, object], error: str
) -> None:
    from pydantic import ValidationError

    from shared.datasets import DatasetSpec

    with pytest.raises(ValidationError, match=error):
        DatasetSpec.model_validate(LABELS_SPEC | change)
