"""A predictor replica on real Redis and MLflow: loads production at start, swaps on
model-promoted, refuses a corrupt version and keeps serving the old one."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from mlflow import MlflowClient

from ingestor.service import ingest
from predictor.app import build_app
from predictor.cache import ModelCache
from predictor.loader import example_frame
from predictor.service import Predictor
from shared.datasets import load_spec
from shared.events import DataArrived, DataIngested, ModelPromoted
from shared.feature_store import FeatureStore
from shared.promotion import promote
from shared.registry import MlflowRegistry
from shared.settings import BUNDLED_DATASETS, IngestorSettings, PredictorSettings
from tests.support.data import churn_rows, write_csv
from tests.support.streams import running
from tests.support.waiting import eventually
from trainer.service import train_for

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
Make = Callable[..., IngestorSettings]


async def test_a_replica_serves_production_and_swaps_on_promotion(
    make_settings: Make,
    redis_db: str,
    mlflow_url: str,
    datasets: tuple[Path, str],
    inbox: Path,
) -> None:
    spec_dir, name = datasets
    settings = make_settings(redis_db, datasets_dir=spec_dir, mlflow_tracking_uri=mlflow_url)
    store = FeatureStore(settings.common.feature_store_root)
    registry = MlflowRegistry(mlflow_url)
    first = ingest(
        DataArrived(dataset="churn", source=str(BUNDLED_DATASETS / "churn" / "churn.csv")),
        settings,
        store,
    )
    assert isinstance(first, DataIngested)
    assert train_for(first, spec_dir, store, registry) is not None  # v1, in production
    write_csv(inbox / "more.csv", churn_rows(2000, seed=21))
    second = ingest(DataArrived(dataset="churn", source=str(inbox / "more.csv")), settings, store)
    assert isinstance(second, DataIngested)
    assert train_for(second, spec_dir, store, registry) is not None  # v2, maybe promoted
    registry.set_alias(name, "production", 1)

    cache = ModelCache()
    replica = PredictorSettings(common=settings.common, converge_s=3600)
    client = aioredis.Redis.from_url(redis_db)
    async with running(build_app(replica, cache=cache)):
        assert cache.version(name) == 1  # loaded before the replica reported ready
        event = promote(registry, name, 2, "manual")
        fields: Any = {"__data__": event.model_dump_json()}
        sent = time.monotonic()
        await client.xadd("model-promoted", fields)

        async def serving_2() -> bool:
            return cache.version(name) == 2

        await eventually(serving_2, timeout=10, what="the replica serving v2")
        swap_seconds = time.monotonic() - sent

        # A version whose artifact is gone: refused, v2 keeps serving.
        run_id = registry.versions(name)[0].run_id
        broken = MlflowClient(tracking_uri=mlflow_url).create_model_version(
            name, source=f"runs:/{run_id}/no-such-model", run_id=run_id
        )
        bad = ModelPromoted(model_name=name, version=int(broken.version), reason="manual")
        fields = {"__data__": bad.model_dump_json()}
        await client.xadd("model-promoted", fields)
        good = ModelPromoted(model_name=name, version=1, reason="rollback")
        fields = {"__data__": good.model_dump_json()}
        await client.xadd("model-promoted", fields)

        async def serving_1() -> bool:
            return cache.version(name) == 1

        await eventually(serving_1, timeout=10, what="the replica back on v1")
        # The corrupt version was never in service: v1 replaced v2 directly.
        previous = cache.previous(name)
        assert previous is not None
        assert previous.version == 2
    await client.aclose()
    spec = load_spec(spec_dir, "churn")
    answer = Predictor(registry, {name: spec}, cache).predict(name, example_frame(spec, 4))
    assert answer.model_version == 1
    assert len(answer.predictions) == 4
    print(f"promotion to v2 served {swap_seconds * 1000:.0f} ms after the event")
