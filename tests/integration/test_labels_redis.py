"""Labels over a real Redis: `labels-arrived` joined to the prediction log by the joiner,
unknown requests kept apart and counted, early labels waited for, and live quality equal to
the same figures computed by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest
from sklearn.metrics import roc_auc_score

from ingestor.labels import GROUP as JOIN_GROUP
from ingestor.labels import LabelJoiner
from ingestor.metrics import LabelMetrics
from ingestor.predlog import GROUP as LOG_GROUP
from ingestor.predlog import PredictionLogger
from ingestor.quality import LiveQuality, QualityCollector
from shared import labels
from shared.broker import ensure_group
from shared.events import Label, LabelsArrived, Lineage, PredictionsLogged
from shared.settings import CommonSettings
from shared.wire import entry_fields
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
RNG = np.random.default_rng(5)
SCORES = RNG.random(300)
TRUTH = (SCORES + RNG.normal(0, 0.3, 300) > 0.5).astype(int)


async def _log(client: aioredis.Redis, root: Path, ids: range) -> None:
    for i in ids:
        event = PredictionsLogged(
            model_name="churn",
            model_version=2,
            latency_ms=1.0,
            requests=[(f"q-{i}", 1)],
            features={"x": [float(i)]},
            predictions=[int(SCORES[i] > 0.5)],
            probabilities=[[1 - SCORES[i], SCORES[i]]],
            classes=[0, 1],
            lineage=Lineage(run_id="run"),
        )
        await client.xadd(event.stream, entry_fields(event))  # type: ignore[arg-type]
    logger = PredictionLogger(client, root, "logger", flush_s=0.1)
    await ensure_group(client, PredictionsLogged.stream, LOG_GROUP)
    while await logger.once(block_ms=50):
        pass


async def _labels(client: aioredis.Redis, ids: list[str], values: list[int]) -> None:
    event = LabelsArrived(
        model_name="churn",
        labels=[Label(request_id=i, label=v) for i, v in zip(ids, values, strict=True)],
    )
    await client.xadd(event.stream, entry_fields(event))  # type: ignore[arg-type]


async def _join(joiner: LabelJoiner, client: aioredis.Redis) -> None:
    async def settled() -> bool:
        await joiner.once(block_ms=50)
        groups: Any = await client.xinfo_groups(LabelsArrived.stream)
        group = next(g for g in groups if g["name"] == JOIN_GROUP.encode())
        return int(group["pending"]) == 0 and int(group.get("lag") or 0) == 0

    await eventually(settled, timeout=20, what="the labels joined")


async def test_labels_are_joined_unknown_ones_kept_and_live_quality_is_exact(
    common: CommonSettings, client: aioredis.Redis
) -> None:
    root = common.feature_store_root
    await _log(client, root, range(300))
    registry = CollectorRegistry()
    joiner = LabelJoiner(client, root, "joiner", grace_s=0, metrics=LabelMetrics(registry))
    await ensure_group(client, LabelsArrived.stream, JOIN_GROUP)
    labelled = list(range(0, 300, 2))  # 150 of the 300 requests
    await _labels(client, [f"q-{i}" for i in labelled], [int(TRUTH[i]) for i in labelled])
    await _labels(client, ["q-unknown-1", "q-unknown-2"], [0, 1])
    await client.xadd(LabelsArrived.stream, {"__data__": '{"model_name": "churn"}'})
    await _join(joiner, client)

    text = generate_latest(registry).decode()
    assert 'streamops_labels_total{model="churn",outcome="joined"} 150.0' in text
    assert 'streamops_labels_total{model="churn",outcome="unmatched"} 2.0' in text
    (unmatched_file,) = (labels.model_dir(root, "churn") / "unmatched").glob("*.parquet")
    assert unmatched_file.stat().st_size > 0
    assert await client.xlen("{labels-arrived}.dlq") == 1

    collector = QualityCollector()
    registry.register(collector)
    live = LiveQuality(root, common.datasets_dir, collector, window_rows=1000, window_s=3600)
    collector.snapshot = live.compute(datetime.now(UTC))
    truth, scores = TRUTH[labelled], SCORES[labelled]
    accuracy = float(np.mean(truth == (scores > 0.5)))
    snap = collector.snapshot
    assert snap.rows[("churn", 2, "rows")] == 150
    assert snap.quality[("churn", 2, "accuracy", "rows")] == pytest.approx(accuracy)
    assert snap.quality[("churn", 2, "accuracy", "time")] == pytest.approx(accuracy)
    assert snap.quality[("churn", 2, "roc_auc", "rows")] == pytest.approx(
        roc_auc_score(truth, scores)
    )
    assert snap.bounds[("churn", "accuracy", "minimum")] == 0.65  # the bundled spec's gate
    text = generate_latest(registry).decode()
    assert (
        'streamops_live_quality{metric="accuracy",model="churn",version="2",window="rows"}' in text
    )


async def test_a_label_ahead_of_its_prediction_waits_for_it(
    common: CommonSettings, client: aioredis.Redis
) -> None:
    root = common.feature_store_root
    joiner = LabelJoiner(client, root, "joiner", grace_s=30)
    await ensure_group(client, LabelsArrived.stream, JOIN_GROUP)
    await _labels(client, ["q-7"], [int(TRUTH[7])])
    assert await joiner.once(block_ms=50) == -1  # not in the log yet: it waits
    assert await joiner.once(block_ms=50) == -1  # the same batch, still pending
    await _log(client, root, range(5, 10))
    assert await joiner.once(block_ms=50) == 1
    joined = labels.read_joined(root, "churn")
    assert joined["request_id"].to_pylist() == ["q-7"]
    assert joined["label"].to_pylist() == [str(TRUTH[7])]


async def test_a_labels_csv_through_the_ingest_path_becomes_labels_and_unknown_ones_are_kept(
    make_settings: Any, redis_db: str, client: aioredis.Redis, tmp_path: Path
) -> None:
    import json

    import yaml

    from ingestor.app import build_app
    from tests.support.streams import running, wait_for_entries

    spec_dir = tmp_path / "specs"
    (spec_dir / "churn-labels").mkdir(parents=True)
    spec = {
        "name": "churn-labels",
        "target": "churned",
        "columns": [
            {"name": "request_id", "type": "str"},
            {"name": "churned", "type": "int", "allowed": [0, 1]},
        ],
        "labels": {"model": "churn"},
        "max_bad_fraction": 0.5,  # four rows: one bad is a quarter
    }
    (spec_dir / "churn-labels" / "spec.yaml").write_text(yaml.safe_dump(spec))
    csv = tmp_path / "inbox" / "labels.csv"
    csv.write_text("request_id,churned\nq-1,1\nq-2,0\nq-3,7\nq-4,1\n")  # q-3: not a class
    settings = make_settings(redis_db, datasets_dir=spec_dir, label_grace_s=0)
    body = {"dataset": "churn-labels", "source": {"kind": "csv", "uri": str(csv)}}
    async with running(build_app(settings)):
        await client.xadd("data-arrived", {"__data__": json.dumps(body)})
        (event,) = await wait_for_entries(client, "labels-arrived", timeout=20)
        root = settings.common.feature_store_root

        async def kept_apart() -> bool:
            return any((labels.model_dir(root, "churn") / "unmatched").glob("*.parquet"))

        await eventually(kept_apart, timeout=20, what="the unknown labels kept apart")
    assert event["model_name"] == "churn"
    assert [(x["request_id"], x["label"]) for x in event["labels"]] == [
        ("q-1", 1),
        ("q-2", 0),
        ("q-4", 1),
    ]
    (ingested,) = await wait_for_entries(client, "data-ingested")
    assert ingested["quarantined_rows"] == 1
