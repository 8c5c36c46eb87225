"""Retraining when the world moves, on real Redis and MLflow: live rows with one feature
shifted make the watcher request exactly one retrain (reason drift), none again inside the
cooldown, and the trainer trains and gates a new version for it; calm rows request nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from ingestor.service import ingest
from shared import predlog
from shared.datasets import load_spec
from shared.events import DataArrived, DataIngested, PredictionsLogged, RetrainRequested
from shared.feature_store import FeatureStore
from shared.registry import MlflowRegistry
from shared.settings import BUNDLED_DATASETS, IngestorSettings, TrainerSettings
from shared.wire import entry_fields
from tests.support.models import churn_features
from tests.support.streams import entries, running, wait_for_entries
from tests.support.waiting import eventually
from trainer.app import build_app
from trainer.metrics import TrainerMetrics
from trainer.retrain import RetrainWatcher

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
RULE = {"drift_psi": 0.25, "drift_minutes": 60, "drift_min_rows": 200, "cooldown_minutes": 60}


def _log_rows(root: Path, model: str, spec_dir: Path, shift: float, seed: int) -> None:
    """600 rows production (v1) answered, as the loggers would have written them."""
    spec = load_spec(spec_dir, "churn")
    frame = churn_features(600, seed=seed)  # typed, as the gateway's validation gives them
    frame["tenure_months"] = frame["tenure_months"] + shift
    features = {c.name: frame[c.name].tolist() for c in spec.feature_columns}
    event = PredictionsLogged(
        model_name=model,
        model_version=1,
        latency_ms=1.0,
        requests=[(f"drift-{seed}", 600)],
        features=features,
        predictions=[0] * 600,
    )
    table = predlog.online_table([(event, f"{seed}-0")])
    day = event.occurred_at.date()
    predlog.write_part(predlog.online_part(root, model, day, f"{seed}-0", f"{seed}-0"), table)


async def test_drift_requests_one_retrain_per_cooldown_and_a_new_version_is_gated(
    make_settings: Callable[..., IngestorSettings],
    redis_db: str,
    mlflow_url: str,
    client: aioredis.Redis,
    datasets: tuple[Path, str],
) -> None:
    spec_dir, name = datasets
    raw = yaml.safe_load((spec_dir / "churn" / "spec.yaml").read_text())
    raw["training"]["retrain"] = RULE
    (spec_dir / "churn" / "spec.yaml").write_text(yaml.safe_dump(raw))
    ingest_settings = make_settings(redis_db, datasets_dir=spec_dir, mlflow_tracking_uri=mlflow_url)
    common = ingest_settings.common
    first = ingest(
        DataArrived(dataset="churn", source=str(BUNDLED_DATASETS / "churn" / "churn.csv")),
        ingest_settings,
        FeatureStore(common.feature_store_root),
    )
    assert isinstance(first, DataIngested)
    settings = TrainerSettings(common=common, watch_s=0, retrain_check_s=0)

    async def publish(event: RetrainRequested) -> None:
        await client.xadd(event.stream, entry_fields(event))  # type: ignore[arg-type]

    registry = MlflowRegistry(mlflow_url)
    metrics = TrainerMetrics()
    watcher = RetrainWatcher(
        client, registry, spec_dir, common.feature_store_root, publish, metrics=metrics
    )
    async with running(build_app(settings)):
        fields: Any = entry_fields(first)
        await client.xadd(first.stream, fields)
        await wait_for_entries(client, "model-promoted", timeout=120)
        assert registry.alias(name, "production") == 1

        _log_rows(common.feature_store_root, name, spec_dir, shift=0, seed=1)
        assert await watcher.check() == []  # live rows like the training rows: nothing

        _log_rows(common.feature_store_root, name, spec_dir, shift=120, seed=2)
        (request,) = await watcher.check()
        assert (request.model_name, request.reason, request.version) == (name, "drift", 1)
        assert request.evidence["tenure_months"] > 0.25
        assert "monthly_charges" not in request.evidence  # only what moved
        assert await watcher.check() == []  # inside the cooldown
        assert await watcher.check() == []

        _, retrained = await wait_for_entries(client, "model-trained", 2, timeout=120)
    assert retrained["model_version"] == 2
    assert retrained["correlation_id"] == request.correlation_id
    assert retrained["dataset_version"] == 1  # the newest data, judged by the usual gate
    assert "gate_passed" in retrained
    tags = registry.versions(name)[1].tags
    assert "retrain-drift" in tags["streamops.training_key"]
    assert await client.xlen("retrain-requested") == 1
    value = metrics.registry.get_sample_value
    assert value("streamops_retrain_requests_total", {"model": name, "reason": "drift"}) == 1
    assert value("streamops_retrain_checks_total") == 4


async def test_a_schedule_requests_a_retrain_when_it_comes_round_and_the_cooldown_holds(
    client: aioredis.Redis, tmp_path: Path
) -> None:
    from shared.datasets import RetrainSpec
    from tests.support.shelf import ModelShelf

    spec_dir = tmp_path / "datasets"
    (spec_dir / "churn").mkdir(parents=True)
    raw = yaml.safe_load((BUNDLED_DATASETS / "churn" / "spec.yaml").read_text())
    raw["training"]["retrain"] = {"schedule_minutes": 60, "cooldown_minutes": 30}
    (spec_dir / "churn" / "spec.yaml").write_text(yaml.safe_dump(raw))
    now = [1_000_000.0]
    sent: list[RetrainRequested] = []

    async def publish(event: RetrainRequested) -> None:
        sent.append(event)

    watcher = RetrainWatcher(
        client, ModelShelf(), spec_dir, tmp_path / "store", publish, clock=lambda: now[0]
    )
    assert await watcher.check() == []  # the schedule starts counting
    now[0] += 59 * 60
    assert await watcher.check() == []
    now[0] += 2 * 60
    (request,) = await watcher.check()
    assert (request.reason, request.version) == ("schedule", None)
    assert request.evidence["minutes"] == pytest.approx(61)
    # Due again by the schedule's clock, but the cooldown is held in Redis (its own clock,
    # 30 real minutes): no second request.
    now[0] += 61 * 60
    assert await watcher.check() == []
    assert RetrainSpec().cooldown_minutes == 60


async def test_a_retrain_on_the_labelled_log_trains_on_a_version_the_ingestor_made_of_it(
    make_settings: Callable[..., IngestorSettings],
    redis_db: str,
    mlflow_url: str,
    client: aioredis.Redis,
    datasets: tuple[Path, str],
) -> None:
    """retrain-requested (spec: `data: prediction_log`) → the trainer asks for the data →
    the ingestor makes v2 = v1's rows + production's labelled rows → the trainer trains and
    gates on v2; a redelivered request makes no third version and no third model."""
    from datetime import UTC, datetime, timedelta

    from ingestor.app import build_app as build_ingestor
    from tests.support.feedback import answered, labelled

    spec_dir, name = datasets
    raw = yaml.safe_load((spec_dir / "churn" / "spec.yaml").read_text())
    raw["training"]["retrain"] = {"schedule_minutes": 600, "data": "prediction_log"}
    for column in raw["columns"]:
        if column["name"] == "customer_id":
            column["nullable"] = True  # the log has no value for it
    (spec_dir / "churn" / "spec.yaml").write_text(yaml.safe_dump(raw))
    ingest_settings = make_settings(redis_db, datasets_dir=spec_dir, mlflow_tracking_uri=mlflow_url)
    common = ingest_settings.common
    store = FeatureStore(common.feature_store_root)
    first = ingest(
        DataArrived(dataset="churn", source=str(BUNDLED_DATASETS / "churn" / "churn.csv")),
        ingest_settings,
        store,
    )
    assert isinstance(first, DataIngested)
    spec = load_spec(spec_dir, "churn")
    now = datetime.now(UTC)
    ids = [f"log-{i}" for i in range(300)]
    answered(common.feature_store_root, name, spec, ids, now - timedelta(minutes=30), seed=7)
    labelled(common.feature_store_root, name, {i: n % 2 for n, i in enumerate(ids)}, now)
    settings = TrainerSettings(common=common, watch_s=0, retrain_check_s=0)
    registry = MlflowRegistry(mlflow_url)
    async with running(build_app(settings)), running(build_ingestor(ingest_settings)):
        await client.xadd(first.stream, entry_fields(first))  # type: ignore[arg-type]
        await wait_for_entries(client, "model-promoted", timeout=120)
        request = RetrainRequested(model_name=name, dataset="churn", reason="decay", version=1)
        await client.xadd(request.stream, entry_fields(request))  # type: ignore[arg-type]
        _, retrained = await wait_for_entries(client, "model-trained", 2, timeout=120)
        (asked,) = await entries(client, DataArrived.stream)
        # A trainer that died after asking, before its ack: the request comes again, and so
        # does the ask (the same event id).
        await client.xadd(request.stream, entry_fields(request))  # type: ignore[arg-type]
        again: Any = entry_fields(DataArrived.model_validate(asked))
        await client.xadd(DataArrived.stream, again)
        await _handled(client, request.stream, "trainer", 2)
        await _handled(client, DataArrived.stream, "ingestor", 2)
    assert asked["source"]["kind"] == "prediction_log"
    assert asked["source"]["base_version"] == 1
    assert asked["correlation_id"] == request.correlation_id
    made = store.get("churn", 2)
    assert made.source.startswith(f"prediction-log:{name} [")
    assert made.rows == first.rows + 300
    assert [v.version for v in store.versions("churn")] == [1, 2]  # the redelivery made none
    assert retrained["model_version"] == 2
    assert retrained["dataset_version"] == 2  # trained on what production saw, labelled
    assert retrained["correlation_id"] == request.correlation_id
    assert "gate_passed" in retrained
    assert len(registry.versions(name)) == 2
    assert len(await entries(client, "model-trained")) == 2


async def _handled(client: aioredis.Redis, stream: str, group: str, count: int) -> None:
    async def done() -> bool:
        info = await client.xpending(stream, group)
        groups: Any = await client.xinfo_groups(stream)
        read = next(int(g["entries-read"]) for g in groups if g["name"].decode() == group)
        return int(info["pending"]) == 0 and read == count

    await eventually(done, timeout=30, what=f"{count} entries of {stream} handled by {group}")
