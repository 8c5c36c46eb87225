"""Training, registering, gating and promoting against a real MLflow server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ingestor.service import ingest
from shared.datasets import load_spec
from shared.drift import DriftReference
from shared.events import DataArrived, DataIngested
from shared.feature_store import FeatureStore
from shared.promotion import promote, rollback
from shared.registry import MlflowRegistry
from shared.settings import BUNDLED_DATASETS, IngestorSettings
from streamops.stack import local_stack
from tests.support.data import churn_rows, write_csv
from trainer.service import train_for

pytestmark = pytest.mark.integration
Make = Callable[..., IngestorSettings]


def _ingest(settings: IngestorSettings, uri: str) -> DataIngested:
    store = FeatureStore(settings.common.feature_store_root)
    result = ingest(DataArrived(dataset="churn", source=uri), settings, store)
    assert isinstance(result, DataIngested), result
    return result


def assert_drift_reference_logged(
    registry: MlflowRegistry, spec_dir: Path, name: str, rows: int
) -> None:
    """Each feature's training distribution is logged with version 1, for live drift."""
    raw = registry.drift_reference(name, 1)
    assert raw is not None
    reference = DriftReference.model_validate(raw)
    spec = load_spec(spec_dir, "churn")
    assert [f.name for f in reference.features] == [c.name for c in spec.feature_columns]
    assert 0 < reference.rows < rows  # the training split, not the hold-out rows
    for feature in reference.features:
        assert sum(feature.shares) == pytest.approx(1.0)


def test_train_register_gate_promote_and_roll_back(
    make_settings: Make, mlflow_url: str, datasets: tuple[Path, str], inbox: Path
) -> None:
    spec_dir, name = datasets
    settings = make_settings(datasets_dir=spec_dir)
    store = FeatureStore(settings.common.feature_store_root)
    registry = MlflowRegistry(mlflow_url)
    client = MlflowClient(tracking_uri=mlflow_url)

    first = _ingest(settings, str(BUNDLED_DATASETS / "churn" / "churn.csv"))
    outcome = train_for(first, spec_dir, store, registry)
    assert outcome is not None
    trained = outcome.trained
    assert (trained.model_name, trained.model_version, trained.dataset_version) == (name, 1, 1)
    assert trained.gate_passed
    assert trained.metrics["roc_auc"] > 0.75
    assert outcome.promoted is not None
    assert (outcome.promoted.version, outcome.promoted.reason) == (1, "auto")
    assert outcome.promoted.previous_version is None
    run = client.get_run(trained.run_id)
    assert run.data.params["estimator"] == "HistGradientBoostingClassifier"
    assert {"accuracy", "f1", "roc_auc", "log_loss", "training_seconds"} <= set(run.data.metrics)
    assert run.inputs is not None
    (lineage,) = run.inputs.dataset_inputs
    assert lineage.dataset.name == "churn@v1"
    assert lineage.dataset.digest == first.content_hash[:36]
    version = client.get_model_version(name, "1")
    assert version.tags["streamops.dataset_version"] == "1"
    assert version.tags["streamops.content_hash"] == first.content_hash
    assert "HistGradientBoostingClassifier" in version.tags["streamops.training_spec"]
    assert set(client.get_registered_model(name).aliases) == {"dev", "staging", "production"}
    assert_drift_reference_logged(registry, spec_dir, name, first.rows)

    # The same event again: no second model version.
    again = train_for(first, spec_dir, store, registry)
    assert again is not None
    assert again.trained.model_version == 1
    assert again.trained.event_id == trained.event_id
    assert again.promoted is None

    # A second version whose labels are noise: registered, judged, not promoted.
    rows = churn_rows(3000, seed=9)
    shuffled = [r["churned"] for r in rows]
    shuffled = shuffled[7:] + shuffled[:7]
    write_csv(
        inbox / "noise.csv", [{**r, "churned": c} for r, c in zip(rows, shuffled, strict=True)]
    )
    second = _ingest(settings, str(inbox / "noise.csv"))
    bad = train_for(second, spec_dir, store, registry)
    assert bad is not None
    assert (bad.trained.model_version, bad.trained.gate_passed) == (2, False)
    assert any("roc_auc" in r for r in bad.trained.gate_reasons)
    assert bad.promoted is None
    assert registry.alias(name, "production") == 1
    assert registry.alias(name, "dev") == 2

    # By hand it can still be promoted; rollback then restores version 1.
    manual = promote(registry, name, 2, "manual")
    assert (manual.version, manual.previous_version) == (2, 1)
    back = rollback(registry, name)
    assert (back.version, back.previous_version, back.reason) == (1, 2, "rollback")
    assert registry.alias(name, "production") == 1


@pytest.fixture
def postgres_mlflow(tmp_path: Path, postgres_db: str) -> Iterator[str]:
    """An MLflow server whose backend store is a throwaway PostgreSQL database."""
    with local_stack(tmp_path / "pg-mlflow") as stack:
        yield stack.start_mlflow(
            backend_uri=postgres_db.replace("postgresql://", "postgresql+psycopg://")
        )


def test_the_registry_flow_on_a_postgresql_backend(
    make_settings: Make, postgres_mlflow: str, datasets: tuple[Path, str]
) -> None:
    import mlflow

    spec_dir, name = datasets
    settings = make_settings(datasets_dir=spec_dir)
    store = FeatureStore(settings.common.feature_store_root)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(postgres_mlflow)
    try:
        registry = MlflowRegistry(postgres_mlflow)
        event = _ingest(settings, str(BUNDLED_DATASETS / "churn" / "churn.csv"))
        outcome = train_for(event, spec_dir, store, registry)
        assert outcome is not None
        assert outcome.promoted is not None
        assert registry.alias(name, "production") == 1
        assert registry.find(name, "streamops.dataset_version", "1") is not None
        manual = promote(registry, name, 1, "manual")
        assert manual.previous_version is None
    finally:
        mlflow.set_tracking_uri(previous)
