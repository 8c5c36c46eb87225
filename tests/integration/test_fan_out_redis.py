"""Fan-out subscribers (every replica reads every promotion) on a real Redis: an entry added
after the replica decided to listen is read, even when no XREAD was waiting for it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from faststream import FastStream
from faststream.redis import RedisStreamMessage, StreamSub

from shared.broker import build_broker, fan_out_start
from shared.settings import CommonSettings
from tests.support.streams import running
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
STREAM = "fan-out-test"


def _listener(url: str, last_id: str, seen: list[Any]) -> FastStream:
    broker = build_broker(CommonSettings(redis_url=url))

    @broker.subscriber(stream=StreamSub(STREAM, last_id=last_id, polling_interval=100))
    async def on_entry(msg: RedisStreamMessage) -> None:
        seen.append(json.loads(msg.raw_message["data"][b"__data__"]))

    return FastStream(broker)


async def test_an_entry_added_before_the_first_read_is_not_lost(
    redis_db: str, client: aioredis.Redis
) -> None:
    # Stream ids are milliseconds of Redis' clock: given here, so the test is exact.
    start = fan_out_start(1000.0)  # a replica deciding to listen at t = 1000 s
    # Added between the decision to listen and the first XREAD: with "$" nobody reads it.
    await client.xadd(STREAM, {"__data__": json.dumps({"n": 1})}, id="1000000-0")
    seen: list[Any] = []
    async with running(_listener(redis_db, start, seen)):
        await client.xadd(STREAM, {"__data__": json.dumps({"n": 2})}, id="1000001-0")

        async def both() -> bool:
            return len(seen) == 2

        await eventually(both, timeout=10, what="both entries read")
    assert seen == [{"n": 1}, {"n": 2}]


async def test_entries_from_before_the_start_are_not_replayed(
    redis_db: str, client: aioredis.Redis
) -> None:
    await client.xadd(STREAM, {"__data__": json.dumps({"n": "old"})}, id="999998-5")
    start = fan_out_start(1000.0)
    seen: list[Any] = []
    async with running(_listener(redis_db, start, seen)):
        await client.xadd(STREAM, {"__data__": json.dumps({"n": "new"})}, id="1000000-0")

        async def one() -> bool:
            return len(seen) >= 1

        await eventually(one, timeout=10, what="the new entry read")
    assert seen == [{"n": "new"}]
