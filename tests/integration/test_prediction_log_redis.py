"""The prediction log over a real Redis: answered HTTP requests reach the `predictions` stream
with their request ids and lineage, and the loggers compact them into Parquet with no row lost
or held twice, across a logger that stops holding a batch (before or after writing it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.app import build_app as build_gateway
from ingestor.predlog import GROUP, STREAM, PredictionLogger, compact
from predictor.app import build_app as build_predictor
from predictor.cache import ModelCache
from shared import predlog
from shared.broker import ensure_group
from shared.events import Lineage, PredictionsLogged
from shared.keys import dead_letter_stream
from shared.settings import CommonSettings, GatewaySettings, PredictorSettings
from shared.wire import entry_fields
from tests.support.data import CHURN_ROW
from tests.support.shelf import ModelShelf
from tests.support.streams import running
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
PREDICT = "/v1/models/churn/predict"


@contextlib.asynccontextmanager
async def serving(
    common: CommonSettings, shelf: ModelShelf, tmp_path: Path, **predictor: Any
) -> AsyncIterator[httpx.AsyncClient]:
    settings = PredictorSettings(common=common, converge_s=3600, **predictor)
    replica = build_predictor(settings, cache=ModelCache(), registry=shelf)
    gateway = build_gateway(
        GatewaySettings(common=common, inbox=tmp_path / "inbox", batch_wait_ms=20), registry=shelf
    )
    async with running(replica), gateway.router.lifespan_context(gateway):
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            yield http


async def drain(logger: PredictionLogger, client: aioredis.Redis) -> None:
    """Run the logger until nothing of the group is pending or unread."""
    await ensure_group(client, STREAM, GROUP)  # as PredictionLogger.run does first

    async def settled() -> bool:
        await logger.once(block_ms=50)
        info: Any = await client.xinfo_groups(STREAM)
        group = next(g for g in info if g["name"] in (GROUP, GROUP.encode()))
        return int(group["pending"]) == 0 and int(group.get("lag") or 0) == 0

    await eventually(settled, timeout=20, what="the prediction log written")


def logger(
    client: aioredis.Redis, common: CommonSettings, name: str, **kw: Any
) -> PredictionLogger:
    return PredictionLogger(client, common.feature_store_root, name, flush_s=0.2, **kw)


async def test_answered_requests_are_logged_with_their_ids_predictions_and_lineage(
    common: CommonSettings, shelf: ModelShelf, tmp_path: Path, client: aioredis.Redis
) -> None:
    rows = [{**CHURN_ROW, "tenure_months": i} for i in range(30)]
    async with serving(common, shelf, tmp_path) as http:
        answers = await asyncio.gather(
            *(
                http.post(PREDICT, json={"rows": [r]}, headers={"X-Request-Id": f"req-{i}"})
                for i, r in enumerate(rows)
            )
        )
        pair = await http.post(PREDICT, json={"rows": rows[:2]}, headers={"X-Request-Id": "pair"})
    assert all(a.status_code == 200 for a in [*answers, pair])
    await drain(logger(client, common, "logger-1"), client)

    table = predlog.read_log(common.feature_store_root, "churn")
    assert table.num_rows == 32  # every row once
    records = {(r["request_id"], r["row"]): r for r in table.to_pylist()}
    assert len(records) == 32
    for i, answer in enumerate(answers):
        record = records[(f"req-{i}", 0)]
        assert record["prediction"] == answer.json()["predictions"][0]
        assert record["probabilities"] == pytest.approx(answer.json()["probabilities"][0])
        assert record["features"]["tenure_months"] == i  # the values as received
    assert records[("pair", 1)]["features"]["tenure_months"] == 1
    record = records[("req-7", 0)]
    assert (record["model"], record["version"], record["source"]) == ("churn", 1, "online")
    lineage = (record["run_id"], record["dataset"], record["dataset_version"])
    assert lineage == ("run-1", "churn", 1)
    assert record["content_hash"] == "hash-1"
    assert record["replica"] == common.consumer_name
    assert record["classes"] == ["0", "1"]

    found = predlog.find_request(common.feature_store_root, "pair")
    assert found.num_rows == 2
    window = predlog.read_log(
        common.feature_store_root, "churn", since=datetime.now(UTC) - timedelta(hours=1)
    )
    assert window.num_rows == 32
    future = datetime.now(UTC) + timedelta(hours=1)
    assert predlog.read_log(common.feature_store_root, "churn", since=future).num_rows == 0


async def test_a_sample_is_logged_and_features_can_be_left_out(
    common: CommonSettings, shelf: ModelShelf, tmp_path: Path, client: aioredis.Redis
) -> None:
    ids = [f"s-{i}" for i in range(200)]
    async with serving(
        common, shelf, tmp_path, log_sample=0.25, log_without_features=["chu*"]
    ) as http:
        for chunk in range(0, len(ids), 50):
            answers = await asyncio.gather(
                *(
                    http.post(PREDICT, json={"rows": [CHURN_ROW]}, headers={"X-Request-Id": rid})
                    for rid in ids[chunk : chunk + 50]
                )
            )
            assert all(a.status_code == 200 for a in answers)
    await drain(logger(client, common, "logger-1"), client)
    table = predlog.read_log(common.feature_store_root, "churn")
    expected = {rid for rid in ids if predlog.sampled(rid, 0.25)}
    assert set(table["request_id"].to_pylist()) == expected
    assert 25 < len(expected) < 75
    assert "features" not in table.column_names


def _entry(rid: str, rows: int = 2) -> PredictionsLogged:
    return PredictionsLogged(
        model_name="m",
        model_version=3,
        replica="r",
        latency_ms=1.5,
        requests=[(rid, rows)],
        features={"x": list(range(rows))},
        predictions=[1] * rows,
        lineage=Lineage(run_id="run", dataset="d", dataset_version=2, content_hash="h"),
    )


async def _add(client: aioredis.Redis, events: list[PredictionsLogged]) -> None:
    for event in events:
        await client.xadd(STREAM, entry_fields(event))  # type: ignore[arg-type]


@pytest.mark.parametrize("stopped", ["before writing", "after writing"])
async def test_a_logger_that_stops_holding_a_batch_loses_and_duplicates_nothing(
    common: CommonSettings, client: aioredis.Redis, stopped: str
) -> None:
    first = logger(client, common, "logger-1", lease_ms=300)
    second = logger(client, common, "logger-2", lease_ms=300)
    await ensure_group(client, STREAM, GROUP)
    await _add(client, [_entry(f"a-{i}") for i in range(40)])
    held = await first.reader.gather(1000, 0.2, 100)  # the batch the first logger dies holding
    assert len(held) == 40
    if stopped == "after writing":  # every file written, not acked
        compact(common.feature_store_root, held)
    await _add(client, [_entry(f"b-{i}") for i in range(10)])

    await drain(second, client)  # it claims the first's batch once idle for a lease
    table = predlog.read_log(common.feature_store_root, "m")
    keys = list(zip(table["request_id"].to_pylist(), table["row"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == 100
    assert {k[0] for k in keys} == {f"a-{i}" for i in range(40)} | {f"b-{i}" for i in range(10)}
    assert set(table["dataset_version"].to_pylist()) == {2}


async def test_a_logger_restarted_under_its_name_writes_its_pending_batch_first(
    common: CommonSettings, client: aioredis.Redis
) -> None:
    await ensure_group(client, STREAM, GROUP)
    await _add(client, [_entry(f"a-{i}") for i in range(5)])
    held = await logger(client, common, "fixed").reader.gather(1000, 0.2, 100)
    compact(common.feature_store_root, held)
    await _add(client, [_entry("later")])
    again = logger(client, common, "fixed")
    assert await again.once(block_ms=50) == 5  # the pending batch, alone: the same files
    await drain(again, client)
    assert predlog.read_log(common.feature_store_root, "m").num_rows == 12


async def test_an_invalid_entry_is_dead_lettered_and_the_rest_written(
    common: CommonSettings, client: aioredis.Redis
) -> None:
    await ensure_group(client, STREAM, GROUP)
    await _add(client, [_entry("good")])
    await client.xadd(STREAM, {"__data__": '{"model_name": "m"}'})
    await drain(logger(client, common, "logger-1"), client)
    assert predlog.read_log(common.feature_store_root, "m").num_rows == 2
    letters: Any = await client.xrange(dead_letter_stream(STREAM))
    assert len(letters) == 1
    assert b"not a valid predictions entry" in letters[0][1][b"__data__"]
