"""The trainer service on real Redis and MLflow: data-ingested in, model events out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from ingestor.service import ingest
from shared.events import DataArrived, DataIngested
from shared.feature_store import FeatureStore
from shared.registry import MlflowRegistry
from shared.settings import BUNDLED_DATASETS, IngestorSettings, TrainerSettings
from tests.support.data import churn_rows, write_csv
from tests.support.streams import entries, running, wait_for_entries
from trainer.app import build_app
from trainer.metrics import TrainerMetrics

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
Make = Callable[..., IngestorSettings]


async def _announce(client: aioredis.Redis, event: DataIngested) -> None:
    fields: Any = {"__data__": event.model_dump_json()}
    await client.xadd("data-ingested", fields)


async def test_data_ingested_yields_model_trained_and_model_promoted(
    make_settings: Make,
    redis_db: str,
    mlflow_url: str,
    client: aioredis.Redis,
    datasets: tuple[Path, str],
    inbox: Path,
) -> None:
    spec_dir, name = datasets
    ingest_settings = make_settings(redis_db, datasets_dir=spec_dir, mlflow_tracking_uri=mlflow_url)
    store = FeatureStore(ingest_settings.common.feature_store_root)
    first = ingest(
        DataArrived(dataset="churn", source=str(BUNDLED_DATASETS / "churn" / "churn.csv")),
        ingest_settings,
        store,
    )
    assert isinstance(first, DataIngested)
    settings = TrainerSettings(common=ingest_settings.common, watch_s=0)
    metrics = TrainerMetrics()
    async with running(build_app(settings, metrics=metrics)):
        await _announce(client, first)
        (trained,) = await wait_for_entries(client, "model-trained", timeout=120)
        (promoted,) = await wait_for_entries(client, "model-promoted", timeout=30)
        assert (trained["model_name"], trained["model_version"], trained["gate_passed"]) == (
            name,
            1,
            True,
        )
        assert trained["correlation_id"] == first.correlation_id
        assert (promoted["version"], promoted["reason"], promoted["previous_version"]) == (
            1,
            "auto",
            None,
        )

        # A second version whose labels are noise: registered, not promoted, and says why.
        rows = churn_rows(3000, seed=9)
        labels = [r["churned"] for r in rows]
        labels = labels[7:] + labels[:7]
        write_csv(
            inbox / "noise.csv", [{**r, "churned": c} for r, c in zip(rows, labels, strict=True)]
        )
        second = ingest(
            DataArrived(dataset="churn", source=str(inbox / "noise.csv")), ingest_settings, store
        )
        assert isinstance(second, DataIngested)
        await _announce(client, second)
        _, failed = await wait_for_entries(client, "model-trained", 2, timeout=120)
    assert (failed["model_version"], failed["dataset_version"], failed["gate_passed"]) == (
        2,
        2,
        False,
    )
    assert any("roc_auc" in reason for reason in failed["gate_reasons"])
    assert len(await entries(client, "model-promoted")) == 1
    registry = MlflowRegistry(mlflow_url)
    assert registry.alias(name, "production") == 1
    assert registry.alias(name, "dev") == 2
    assert json.loads(registry.versions(name)[1].tags["streamops.gate_passed"]) is False

    value = metrics.registry.get_sample_value
    assert value("streamops_trainings_total", {"dataset": "churn", "outcome": "trained"}) == 2
    assert value("streamops_training_seconds_count", {"dataset": "churn"}) == 2
    assert value("streamops_gate_verdicts_total", {"model": name, "verdict": "passed"}) == 1
    assert value("streamops_gate_verdicts_total", {"model": name, "verdict": "failed"}) == 1
    assert value("streamops_promotions_total", {"model": name, "reason": "auto"}) == 1
    assert value("streamops_model_newest_version", {"model": name}) == 2
    holdout = value("streamops_model_holdout_metric", {"model": name, "metric": "roc_auc"})
    assert holdout == failed["metrics"]["roc_auc"]
