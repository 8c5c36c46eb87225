"""Retraining on the labelled prediction log, without a broker: a spec that asks for it, the
request as the data it asks for, and the ingestor making that data a version (the base
version's rows, then production's labelled rows) exactly once."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from ingestor.logsource import labelled_rows
from ingestor.service import ingest
from shared.datasets import DatasetSpec, load_spec
from shared.events import (
    DataArrived,
    DataIngested,
    DataRejected,
    PredictionLogSource,
    RetrainRequested,
)
from shared.feature_store import FeatureStore
from shared.settings import BUNDLED_DATASETS, IngestorSettings
from tests.support.feedback import answered, labelled
from tests.support.models import churn_features
from trainer.service import log_arrival

NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)
Make = Callable[..., IngestorSettings]


def _spec_dir(tmp_path: Path, **retrain: Any) -> Path:
    """The churn spec retraining on its log: customer_id (no feature) made nullable."""
    raw = yaml.safe_load((BUNDLED_DATASETS / "churn" / "spec.yaml").read_text())
    raw["training"]["retrain"] = {"schedule_minutes": 60, "data": "prediction_log", **retrain}
    for column in raw["columns"]:
        if column["name"] == "customer_id":
            column["nullable"] = True
    (tmp_path / "datasets" / "churn").mkdir(parents=True)
    (tmp_path / "datasets" / "churn" / "spec.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "datasets"


def _source(**overrides: Any) -> PredictionLogSource:
    window: dict[str, Any] = {"model": "churn", "since": NOW - 24 * HOUR, "until": NOW}
    return PredictionLogSource(**(window | overrides))


def test_a_spec_that_retrains_on_its_log_must_let_the_log_fill_every_column(
    tmp_path: Path,
) -> None:
    raw = yaml.safe_load((BUNDLED_DATASETS / "churn" / "spec.yaml").read_text())
    raw["training"]["retrain"] = {"data": "prediction_log"}
    with pytest.raises(ValidationError, match=r"\['customer_id'\].*make them nullable"):
        DatasetSpec.model_validate(raw)
    spec = load_spec(_spec_dir(tmp_path), "churn")
    assert spec.training is not None
    assert spec.training.retrain is not None
    assert (spec.training.retrain.data, spec.training.retrain.log_days) == ("prediction_log", 7)


def test_a_window_must_end_after_it_starts() -> None:
    with pytest.raises(ValidationError, match="since must be before until"):
        _source(since=NOW, until=NOW)


def test_the_labelled_rows_of_the_window_become_the_specs_columns(tmp_path: Path) -> None:
    spec = load_spec(_spec_dir(tmp_path), "churn")
    root = tmp_path / "store"
    answered(root, "churn", spec, ["old-0"], NOW - 48 * HOUR, seed=1)  # before the window
    answered(root, "churn", spec, ["a-0", "a-1", "a-2"], NOW - 2 * HOUR, seed=2)
    answered(root, "churn", spec, ["late-0"], NOW + HOUR, seed=3)  # after it
    labelled(root, "churn", {"old-0": 1, "a-0": 1, "a-2": 0, "late-0": 1}, NOW - HOUR)
    labelled(root, "churn", {"a-1": 1}, NOW + 2 * HOUR)  # labelled after the window: not taken

    rows = labelled_rows(root, spec, _source())

    assert rows.column_names == list(spec.column_names)
    features = churn_features(3, seed=2)
    shown = [0, 2]  # a-1's label came too late
    assert rows["tenure_months"].to_pylist() == features["tenure_months"][shown].tolist()
    assert rows["plan"].to_pylist() == features["plan"][shown].tolist()
    assert rows["churned"].to_pylist() == ["1", "0"]  # the label, validated as a CSV cell is
    assert rows["signup_at"].to_pylist() == [NOW - 2 * HOUR] * 2  # when it was answered
    assert rows["customer_id"].null_count == 2
    assert labelled_rows(root, spec, _source()).equals(rows)  # the same window, the same rows


def test_the_ingestor_appends_the_labelled_log_to_the_base_version_once(
    make_settings: Make, tmp_path: Path
) -> None:
    settings = make_settings(datasets_dir=_spec_dir(tmp_path))
    store = FeatureStore(settings.common.feature_store_root)
    spec = load_spec(settings.common.datasets_dir, "churn")
    csv = DataArrived(dataset="churn", source=str(BUNDLED_DATASETS / "churn" / "churn.csv"))
    base = ingest(csv, settings, store)
    assert isinstance(base, DataIngested)
    root = settings.common.feature_store_root
    ids = [f"r-{i}" for i in range(40)]
    answered(root, "churn", spec, ids, NOW - 3 * HOUR, seed=4)
    truth = {i: n % 2 for n, i in enumerate(ids)}
    labelled(root, "churn", truth, NOW - HOUR)

    arrived = DataArrived(dataset="churn", source=_source(base_version=base.version))
    made = ingest(arrived, settings, store)
    assert isinstance(made, DataIngested)
    assert (made.version, made.new_version) == (2, True)
    assert (made.rows, made.quarantined_rows) == (base.rows + 40, 0)
    assert made.source.startswith("prediction-log:churn [")
    assert made.source.endswith(f"after v{base.version}")
    table = store.read("churn", made.version)
    assert table.slice(0, base.rows).equals(store.read("churn", base.version))
    # Answered at the same time: in request id order.
    assert table.slice(base.rows)["churned"].to_pylist() == [truth[i] for i in sorted(ids)]

    again = ingest(arrived, settings, store)  # a redelivery: the same rows, no second version
    assert isinstance(again, DataIngested)
    assert (again.version, again.new_version, again.event_id) == (2, False, made.event_id)
    assert len(store.versions("churn")) == 2


def test_an_empty_window_or_another_models_log_is_rejected_with_its_reason(
    make_settings: Make, tmp_path: Path
) -> None:
    settings = make_settings(datasets_dir=_spec_dir(tmp_path))
    store = FeatureStore(settings.common.feature_store_root)
    empty = ingest(DataArrived(dataset="churn", source=_source()), settings, store)
    assert isinstance(empty, DataRejected)
    assert (empty.kind, empty.source[:19]) == ("source_error", "prediction-log:chur")
    assert "no labelled row" in empty.reason
    other = ingest(DataArrived(dataset="churn", source=_source(model="fraud")), settings, store)
    assert isinstance(other, DataRejected)
    assert "is not churn's" in other.reason
    missing = ingest(DataArrived(dataset="churn", source=_source(base_version=7)), settings, store)
    assert isinstance(missing, DataRejected)
    assert store.versions("churn") == []


def test_a_retrain_on_the_log_asks_for_the_newest_version_not_made_from_the_log(
    make_settings: Make, tmp_path: Path
) -> None:
    settings = make_settings(datasets_dir=_spec_dir(tmp_path, log_days=2))
    store = FeatureStore(settings.common.feature_store_root)
    spec = load_spec(settings.common.datasets_dir, "churn")
    request = RetrainRequested(
        occurred_at=NOW, model_name="churn", dataset="churn", reason="drift", version=1
    )
    first = log_arrival(request, spec, store)
    assert isinstance(first.source, PredictionLogSource)
    assert (first.source.base_version, first.source.until) == (None, NOW)
    assert first.source.since == NOW - timedelta(days=2)
    assert first == log_arrival(request, spec, store)  # a redelivery asks for the same

    csv = DataArrived(dataset="churn", source=str(BUNDLED_DATASETS / "churn" / "churn.csv"))
    assert isinstance(ingest(csv, settings, store), DataIngested)
    answered(settings.common.feature_store_root, "churn", spec, ["x-0"], NOW - HOUR, seed=5)
    labelled(settings.common.feature_store_root, "churn", {"x-0": 1}, NOW - HOUR)
    made = ingest(DataArrived(dataset="churn", source=_source(base_version=1)), settings, store)
    assert isinstance(made, DataIngested)
    assert made.version == 2
    later = RetrainRequested(model_name="churn", dataset="churn", reason="decay", version=2)
    asked = log_arrival(later, spec, store)
    assert isinstance(asked.source, PredictionLogSource)
    assert asked.source.base_version == 1  # v2 came from the log: its rows are not taken twice
    assert asked.event_id != first.event_id
    assert uuid.UUID(str(asked.event_id)).version == 5
