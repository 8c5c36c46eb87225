"""Shadowing on real Redis: a challenger predicts the sampled requests after production's
answers are published; clients get production's answers only; the challenger's records go
to the prediction log marked shadow, and its agreement to the metrics. On a real MLflow
server: the challenger alias and its sample, set and read back, and a replica that loads a
challenger when the alias moves and drops it with the alias."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis.asyncio as aioredis

from ingestor.predlog import compact
from predictor.cache import ModelCache
from predictor.metrics import PredictorMetrics
from predictor.online import OnlinePredictor
from predictor.predlog import LogPolicy
from predictor.service import Predictor
from shared import labels, predlog
from shared.broker import ensure_group
from shared.datasets import DatasetSpec, feature_frame, load_spec
from shared.events import BatchPredicted, PredictionRequested, PredictionsLogged
from shared.registry import CANARY, CHALLENGER, Canary, Challenger
from shared.settings import BUNDLED_DATASETS, IngestorSettings
from shared.wire import entry_body, entry_fields
from tests.support.shelf import ModelShelf, churn_frame, two_pipelines
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
SAMPLE = 0.5


def _batch(spec: DatasetSpec, frame: pd.DataFrame, prefix: str) -> PredictionRequested:
    """One coalesced batch: a one-row HTTP request per row."""
    features = frame[[c.name for c in spec.feature_columns]]
    return PredictionRequested(
        model_name="churn",
        reply_to="replies",
        deadline=time.time() + 30,
        columns={name: features[name].tolist() for name in features.columns},
        requests=[(f"{prefix}-{i}", 1) for i in range(len(frame))],
    )


async def test_a_challenger_shadows_the_sampled_requests_and_never_answers(
    client: aioredis.Redis, tmp_path: Path
) -> None:
    spec = load_spec(BUNDLED_DATASETS, "churn")
    champion, challenger = two_pipelines()
    shelf = ModelShelf(
        models={1: champion, 2: challenger}, production=1, challenger=Challenger(2, SAMPLE)
    )
    predictor = Predictor(shelf, {"churn": spec}, ModelCache())
    predictor.converge()
    for name, version, sample in predictor.aside_changes(CHALLENGER).stale:
        predictor.load_aside(CHALLENGER, name, version, sample)
    metrics = PredictorMetrics()
    policy = LogPolicy(sample=1.0, maxlen=10_000, keeps_features=lambda name: True)
    online = OnlinePredictor(client, predictor, "replica-1", 10, metrics=metrics, log=policy)
    frames = [churn_frame(40, seed=s) for s in (31, 32, 33)]
    batches = [_batch(spec, f, f"b{n}") for n, f in enumerate(frames)]
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("replies")
    await ensure_group(client, PredictionRequested.stream, "predictor")
    for batch in batches:
        await client.xadd(batch.stream, entry_fields(batch))  # type: ignore[arg-type]

    assert await online.once(block_ms=100) == 3

    replies: list[BatchPredicted] = []

    async def all_answered() -> bool:
        message = await pubsub.get_message(timeout=0.2)
        if message is not None:
            replies.append(BatchPredicted.model_validate_json(message["data"]))
        return len(replies) == 3

    await eventually(all_answered, timeout=10, what="the three answers")
    await pubsub.aclose()
    assert {r.model_version for r in replies} == {1}  # production answers, only
    entries: Any = await client.xrange(PredictionsLogged.stream)
    logged = [PredictionsLogged.model_validate_json(entry_body(f)) for _, f in entries]
    shadowed = [e for e in logged if e.shadow]
    answered = [e for e in logged if not e.shadow]
    assert sum(len(e.predictions) for e in answered) == 120

    rows = pd.concat(frames, ignore_index=True)
    ids = [f"b{n}-{i}" for n in range(3) for i in range(40)]
    drawn = [i for i, rid in enumerate(ids) if predlog.sampled(rid, SAMPLE)]
    assert 30 < len(drawn) < 90  # about half
    (entry,) = shadowed
    assert (entry.model_version, entry.features) == (2, None)
    assert [rid for rid, _ in entry.requests] == [ids[i] for i in drawn]
    chosen = feature_frame(spec, rows.iloc[drawn])
    assert entry.predictions == challenger.predict(chosen).tolist()
    agreeing = int(np.sum(challenger.predict(chosen) == champion.predict(chosen)))
    value = metrics.registry.get_sample_value
    pair = {"model": "churn", "champion": "1", "challenger": "2"}
    assert value("streamops_shadow_rows_total", pair) == len(drawn)
    assert value("streamops_shadow_agreeing_rows_total", pair) == agreeing
    assert value("streamops_shadow_predict_seconds_count", {"model": "churn", "version": "2"})

    _logged_apart(tmp_path, entries, ids[drawn[0]], len(drawn))
    _judged_apart(tmp_path, logged)


def _logged_apart(root: Path, entries: Any, drawn_id: str, drawn: int) -> None:
    """Through a logger into Parquet: readers of what production answered do not see the
    challenger's records; asked for, they are there, marked."""
    done = compact(root, [(mid.decode(), fields) for mid, fields in entries])
    assert done.records == {"churn": 120 + drawn}
    assert predlog.read_log(root, "churn").num_rows == 120
    both = predlog.read_log(root, "churn", shadow=True)
    sources = both.group_by("source").aggregate([([], "count_all")]).to_pylist()
    assert sorted((s["source"], s["count_all"]) for s in sources) == [
        ("online", 120),
        ("shadow", drawn),
    ]
    answered, said = labels.lookup(root, "churn", [drawn_id])
    assert answered["version"].to_pylist() == [1]  # a label judges the answer the client got
    assert said["version"].to_pylist() == [2]  # and, apart, what the challenger said


def _judged_apart(root: Path, logged: list[PredictionsLogged]) -> None:
    """Labels for every request: production judged on all of them, the challenger on the rows
    it shadowed, each against what it said."""
    from datetime import UTC, datetime

    from ingestor.labels import join_batch
    from ingestor.quality import LiveQuality, QualityCollector
    from shared.events import Label, LabelsArrived

    said = {
        (rid, e.shadow): p
        for e in logged
        for (rid, _), p in zip(e.requests, e.predictions, strict=True)
    }
    ids = sorted({rid for rid, _ in said})
    truth = {rid: (sum(map(ord, rid)) % 2) for rid in ids}  # any labels will do
    arrived = LabelsArrived(
        model_name="churn", labels=[Label(request_id=i, label=v) for i, v in truth.items()]
    )
    fields = {k.encode(): v for k, v in entry_fields(arrived).items()}  # as read from Redis
    joined = join_batch(root, [("9-0", fields)], now=datetime.now(UTC), grace_s=0)
    assert joined.joined == {"churn": 120}
    snap = LiveQuality(root, BUNDLED_DATASETS, QualityCollector()).compute()
    shadowed = [rid for rid in ids if (rid, True) in said]
    right = sum(said[(rid, True)] == truth[rid] for rid in shadowed) / len(shadowed)
    assert snap.shadow_quality[("churn", 2, "accuracy", "rows")] == pytest.approx(right)
    assert snap.shadow_rows[("churn", 2, "rows")] == len(shadowed)
    right = sum(said[(rid, False)] == truth[rid] for rid in ids) / len(ids)
    assert snap.quality[("churn", 1, "accuracy", "rows")] == pytest.approx(right)
    assert ("churn", 2, "accuracy", "rows") not in snap.quality


async def test_the_challenger_alias_is_loaded_when_it_moves_and_dropped_with_it(
    make_settings: Callable[..., IngestorSettings],
    redis_db: str,
    mlflow_url: str,
    datasets: tuple[Path, str],
) -> None:
    from predictor.app import build_app
    from shared.promotion import shadow
    from shared.registry import MlflowRegistry
    from shared.settings import PredictorSettings
    from tests.support.models import register
    from tests.support.streams import running

    spec_dir, name = datasets
    spec = load_spec(spec_dir, "churn")
    first, second = two_pipelines()
    register(mlflow_url, spec, first)  # v1, production
    register(mlflow_url, spec, second, production=False)  # v2
    registry = MlflowRegistry(mlflow_url)
    assert registry.challengers().get(name) is None
    settings = make_settings(redis_db, datasets_dir=spec_dir, mlflow_tracking_uri=mlflow_url)
    cache = ModelCache()
    replica = PredictorSettings(common=settings.common, converge_s=1, shadow_sample=0.2)
    client = aioredis.Redis.from_url(redis_db)
    async with running(build_app(replica, cache=cache)):
        event = shadow(registry, name, 2, 0.25)
        assert registry.challengers()[name] == Challenger(2, 0.25)
        await client.xadd(event.stream, entry_fields(event))  # type: ignore[arg-type]

        async def shadowing() -> bool:
            held = cache.aside(CHALLENGER, name)
            return held is not None and (held.served.version, held.share) == (2, 0.25)

        await eventually(shadowing, timeout=30, what="v2 shadowing a quarter")
        assert cache.version(name) == 1  # production unchanged

        registry.end_shadow(name)

        async def dropped() -> bool:
            return cache.aside(CHALLENGER, name) is None

        await eventually(dropped, timeout=30, what="the challenger dropped at a converge")

        # The same version as a canary, set and ended with the command line.
        env = {**os.environ, "STREAMOPS_MLFLOW_TRACKING_URI": mlflow_url,
               "STREAMOPS_REDIS_URL": redis_db}  # fmt: skip
        cli = [sys.executable, "-m", "streamops.cli", "canary", name]
        done = subprocess.run([*cli, "2", "--percent", "20"], env=env, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert registry.canaries()[name] == Canary(2, 20.0)

        async def routed() -> bool:
            held = cache.aside(CANARY, name)
            return held is not None and (held.served.version, held.share) == (2, 0.2)

        await eventually(routed, timeout=30, what="v2 the canary for a fifth")
        itself = subprocess.run([*cli, "1"], env=env, capture_output=True, text=True,
                                timeout=120, check=False)  # fmt: skip
        assert (itself.returncode, "in production" in itself.stderr) == (1, True)
        ended = subprocess.run([*cli, "--off"], env=env, capture_output=True, text=True,
                               timeout=120, check=False)  # fmt: skip
        assert ended.returncode == 0, ended.stderr

        async def withdrawn() -> bool:
            return cache.aside(CANARY, name) is None

        await eventually(withdrawn, timeout=5, what="the canary dropped on its withdrawal")
    await client.aclose()
    assert name not in registry.challengers()
    assert name not in registry.canaries()
