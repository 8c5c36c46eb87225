"""A predictor replica on real Redis and MLflow: loads production at start, swaps on
model-promoted, refuses a corrupt version and keeps serving the old one; serves a model
registered while it runs and drops it with its alias."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
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
from shared.keys import heartbeat_key
from shared.promotion import promote
from shared.registry import MlflowRegistry
from shared.schema import ModelSchema
from shared.settings import BUNDLED_DATASETS, CommonSettings, IngestorSettings, PredictorSettings
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


async def test_a_model_registered_while_running_is_served_and_dropped_with_its_alias(
    common: CommonSettings, mlflow_url: str
) -> None:
    """Registered outside streamops (no dataset spec: its signature is its schema), found at
    a converge, announced in the heartbeat with its schema; gone with its alias."""
    import mlflow

    from tests.support.outside import ROW, log_lightgbm

    name = f"byom-{uuid.uuid4().hex[:8]}"
    settings = PredictorSettings(
        common=common.model_copy(update={"mlflow_tracking_uri": mlflow_url}),
        converge_s=0.3,
        models=[name],  # the MLflow server is shared by the session
    )
    cache = ModelCache()
    client = aioredis.Redis.from_url(common.redis_url)
    beat_key = heartbeat_key("predictor", common.consumer_name)

    async def heartbeat() -> dict[str, Any]:
        raw = await client.get(beat_key)
        return {} if raw is None else dict(json.loads(raw))

    async with running(build_app(settings, cache=cache)):
        assert cache.names() == ()
        mlflow.set_tracking_uri(mlflow_url)
        mlflow.set_experiment(f"outside-{name}")
        with mlflow.start_run():
            version = int(log_lightgbm(name, 3).registered_model_version)
        registry = MlflowRegistry(mlflow_url)
        registry.set_alias(name, "production", version)

        async def announced() -> dict[str, Any] | None:
            found = await heartbeat()
            return found if found.get("models") == {name: version} else None

        beat = await eventually(announced, timeout=20, what=f"{name} in the heartbeat")
        assert beat is not None
        schema = ModelSchema.model_validate(beat["schemas"][name])
        assert (schema.source, schema.names) == ("signature", ("amount", "age", "visits"))
        answer = Predictor(registry, {}, cache).predict(name, pd.DataFrame([ROW]))
        assert answer.classes == (0, 1)

        MlflowClient(tracking_uri=mlflow_url).delete_registered_model_alias(name, "production")

        async def dropped() -> bool:
            return (await heartbeat()).get("models") == {} and cache.version(name) is None

        await eventually(dropped, timeout=20, what=f"{name} dropped")
    await client.aclose()
