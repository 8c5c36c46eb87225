"""The Redis parts on a real Redis Cluster (3 masters, 3 replicas, started by the fixtures):
the delivery bookkeeping and dead-letter move stay on one slot, the replication fence waits
for a replica of every master, a scoring job is planned in one MULTI with its chunks, and an
online prediction goes gateway → replica → gateway through the cluster (stream, heartbeats in
one MGET, the reply on Pub/Sub); `streamops up --redis-cluster` starts one of its own."""

from __future__ import annotations

import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.app import build_app as build_gateway
from predictor.app import build_app as build_predictor
from predictor.cache import ModelCache
from predictor.scoring_jobs import JobBook
from shared.broker import is_cluster, redis_client, sync_redis_client, xread_all
from shared.delivery import RedisLedger
from shared.errors import ReplicationLagging
from shared.events import ALL_EVENTS, ScoreChunkRequested
from shared.jobs import job_status
from shared.keys import dead_letter_stream
from shared.replication import Replication
from shared.settings import CommonSettings, GatewaySettings, PredictorSettings
from shared.wire import text
from streamops.stack import bring_up, local_stack
from tests.conftest import LocalCluster
from tests.support.data import CHURN_ROW
from tests.support.shelf import ModelShelf
from tests.support.streams import entries, running
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.anyio]


@pytest.fixture
async def cluster_client(redis_cluster: LocalCluster) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(redis_cluster.common())
    assert is_cluster(client)
    yield client
    await client.aclose()


async def test_acks_done_marks_and_dead_letters_stay_on_the_stream_slot(
    cluster_client: aioredis.Redis,
) -> None:
    stream = f"orders-{uuid.uuid4().hex[:8]}"
    await cluster_client.xgroup_create(stream, "g", id="0", mkstream=True)
    first = text(await cluster_client.xadd(stream, {"__data__": "{}"}))
    second = text(await cluster_client.xadd(stream, {"__data__": "not json"}))
    await cluster_client.xreadgroup("g", "c", {stream: ">"})
    ledger = RedisLedger(cluster_client, stream, "g", "c", done_ttl_s=60)
    event_id = uuid.uuid4()

    await ledger.record_error(first, "boom")
    assert await ledger.last_error(first) == "boom"
    await ledger.ack(first, done=event_id)  # SET done + XACK + HDEL in one MULTI
    await ledger.dead_letter(second, {"reason": "not JSON"})  # XADD dlq + XACK + HDEL

    assert await ledger.is_done(event_id)
    assert await ledger.last_error(first) is None
    assert await cluster_client.xpending(stream, "g") == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
    (letter,) = await entries(cluster_client, dead_letter_stream(stream))
    assert letter == {"reason": "not JSON"}


async def test_the_fence_waits_for_a_replica_of_every_master(
    redis_cluster: LocalCluster, cluster_client: aioredis.Redis
) -> None:
    fence = Replication(cluster_client, replicas=1, timeout_ms=200)
    for n in range(10):  # writes on every master, then the fence over all of them
        await cluster_client.set(f"fenced-{n}", n)
    await fence.settle()
    # A replica stopped (as a stalled or partitioned one would be): its master's writes are
    # not confirmed, and the ack must not happen. Resumed: confirmed again.
    cluster: Any = cluster_client
    master = str(cluster.get_node_from_key("fenced-0").name)
    replica = redis_cluster.replica_process(master)
    replica.send_signal(signal.SIGSTOP)
    try:
        await cluster_client.set("fenced-0", "again")
        with pytest.raises(ReplicationLagging, match=f"0 of 1 replicas of {master}"):
            await fence.settle()
    finally:
        replica.send_signal(signal.SIGCONT)
    await eventually(_settles(fence), timeout=10, what="the fence after the replica resumed")
    await fence.aclose()


def _settles(fence: Replication) -> Callable[[], Awaitable[bool]]:
    async def settles() -> bool:
        try:
            await fence.settle()
        except ReplicationLagging:
            return False
        return True

    return settles


async def test_a_redis_without_replicas_is_not_waited_for(redis_db: str) -> None:
    client = aioredis.Redis.from_url(redis_db)
    fence = Replication(client, replicas=1, timeout_ms=100)
    await client.set("k", "v")
    # Nothing could take over without the write, so no WAIT at all: one would have found no
    # replica and raised "0 of 1".
    await fence.settle()
    await fence.aclose()
    await client.aclose()


async def test_several_streams_on_different_slots_are_read_together(
    cluster_client: aioredis.Redis,
) -> None:
    streams = ["model-promoted", "predictions", "predict-failures"]
    ids = {s: text(await cluster_client.xadd(s, {"n": s})) for s in streams}
    before = {s: f"{int(i.split('-')[0]) - 1}-0" for s, i in ids.items()}
    reply = await xread_all(cluster_client, before, count=10, block_ms=100)
    assert {r[0].decode() for r in reply} == set(streams)


async def test_a_scoring_job_is_planned_with_its_chunks_in_one_multi(
    cluster_client: aioredis.Redis, tmp_path: Path
) -> None:
    job = f"job-{uuid.uuid4().hex[:8]}"
    chunks = [
        ScoreChunkRequested(
            job_id=job,
            model_name="churn",
            model_version=1,
            chunk=i,
            chunks=2,
            start=i * 10,
            stop=i * 10 + 10,
            input_path=str(tmp_path / "in.parquet"),
            output_path=str(tmp_path / "out.parquet"),
        )
        for i in range(2)
    ]
    book = JobBook(cluster_client, ttl_s=60)
    before = await cluster_client.xlen(ScoreChunkRequested.stream)
    assert await book.plan({"job_id": job, "model_name": "churn", "chunks": 2}, chunks)
    assert not await book.plan({"job_id": job}, chunks)  # planned once
    assert await cluster_client.xlen(ScoreChunkRequested.stream) == before + 2
    assert await book.chunk_done(job, 0) == (1, "planned")
    status = await job_status(cluster_client, job)
    assert status is not None
    assert status.chunks_done == 1


@contextlib.asynccontextmanager
async def replica(common: CommonSettings, shelf: ModelShelf) -> AsyncIterator[ModelCache]:
    cache = ModelCache()
    settings = PredictorSettings(common=common, converge_s=3600)
    async with running(build_predictor(settings, cache=cache, registry=shelf)):
        yield cache


async def test_an_online_prediction_goes_through_the_cluster(
    redis_cluster: LocalCluster, shelf: ModelShelf, tmp_path: Path
) -> None:
    common = redis_cluster.common(
        feature_store_root=tmp_path / "store", consumer_name=f"replica-{uuid.uuid4().hex[:6]}"
    )
    settings = GatewaySettings(common=common, inbox=tmp_path / "inbox")
    app = build_gateway(settings, registry=shelf)
    async with replica(common, shelf), app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await eventually(ready, timeout=30, what="the gateway seeing the replica")
            answer = await http.post("/v1/models/churn/predict", json={"rows": [CHURN_ROW]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == 1
    assert len(answer.json()["probabilities"][0]) == 2


def test_up_can_start_a_local_cluster_for_the_services(tmp_path: Path, mlflow_url: str) -> None:
    # `streamops up --redis-cluster`, without the services: the cluster and what they are given.
    environ = {"STREAMOPS_MLFLOW_TRACKING_URI": mlflow_url}
    with local_stack(tmp_path) as stack:
        running = bring_up(stack, (), environ=environ, redis_cluster=True)
        nodes = running.env["STREAMOPS_REDIS_CLUSTER_NODES"].split(",")
        assert len(nodes) == 6
        assert running.redis_url == f"redis://{nodes[0]}/0"
        common = CommonSettings(
            redis_url=running.redis_url,
            redis_cluster_nodes=running.env["STREAMOPS_REDIS_CLUSTER_NODES"],
        )
        client = sync_redis_client(common)
        try:
            streams = [e.stream for e in ALL_EVENTS]
            for stream in streams:  # every stream, wherever its slot lives
                client.xadd(stream, {"n": "1"})
            assert all(client.xlen(stream) == 1 for stream in streams)
            masters = {client.get_node_from_key(s).name for s in streams}  # type: ignore[attr-defined]
            assert len(masters) == 3
        finally:
            client.close()
