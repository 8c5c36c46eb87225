"""Leases and reclaiming on a real Redis: long work is not repeated, dead consumers' work is."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from faststream import FastStream

from shared.broker import build_broker, ensure_group, redis_client
from shared.delivery import Delivery, RedisLedger, subscribe
from shared.events import DataArrived
from shared.settings import CommonSettings
from tests.support.streams import pending, running
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

STREAM, GROUP = "jobs", "workers"
MESSAGE: Any = {"__data__": json.dumps({"dataset": "toy", "source": "x.csv"}).encode()}


def _consumer(
    url: str, name: str, work: Callable[[DataArrived], Awaitable[None]], lease_ms: int
) -> FastStream:
    common = CommonSettings(
        redis_url=url, consumer_name=name, lease_ms=lease_ms, claim_interval_ms=50
    )
    broker = build_broker(common)
    client = redis_client(common)
    ledger = RedisLedger(client, STREAM, GROUP, name, common.done_ttl_s)
    subscribe(broker, Delivery(ledger, STREAM, GROUP, name, common), DataArrived, work)

    async def create_group() -> None:
        await ensure_group(client, STREAM, GROUP)

    async def close() -> None:
        await client.aclose()

    return FastStream(broker, on_startup=[create_group], after_shutdown=[close])


async def test_work_longer_than_the_lease_is_not_claimed_by_another_consumer(
    redis_db: str, client: aioredis.Redis
) -> None:
    calls: list[str] = []
    finished = asyncio.Event()

    def slow(name: str) -> Callable[[DataArrived], Awaitable[None]]:
        async def work(event: DataArrived) -> None:
            calls.append(name)
            await asyncio.sleep(1.5)  # five leases of 300 ms
            finished.set()

        return work

    async with (
        running(_consumer(redis_db, "a", slow("a"), 300)),
        running(_consumer(redis_db, "b", slow("b"), 300)),
    ):
        await client.xadd(STREAM, MESSAGE)
        await asyncio.wait_for(finished.wait(), timeout=10)
        await eventually(lambda: _acked(client), what="the message acked")
        # Both consumers kept polling for abandoned messages all along.
        assert len(calls) == 1


async def _acked(client: aioredis.Redis) -> bool:
    return await pending(client, STREAM, GROUP) == 0


async def test_a_dead_consumers_message_is_claimed_and_done_by_another(
    redis_db: str, client: aioredis.Redis
) -> None:
    await ensure_group(client, STREAM, GROUP)
    await client.xadd(STREAM, MESSAGE)
    # A consumer reads the message and dies before acknowledging it.
    await client.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=1)
    assert await pending(client, STREAM, GROUP) == 1
    done: list[str] = []

    async def work(event: DataArrived) -> None:
        done.append(event.dataset)

    async with running(_consumer(redis_db, "heir", work, 400)):
        await eventually(lambda: _acked(client), timeout=10, what="the orphan reclaimed")
    assert done == ["toy"]
