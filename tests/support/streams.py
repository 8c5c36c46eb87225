"""Reading and writing streams the way an outside client would: plain redis-py, no FastStream."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from faststream import FastStream

from tests.support.waiting import eventually


@contextlib.asynccontextmanager
async def running(app: FastStream) -> AsyncIterator[FastStream]:
    """Start a service in this event loop, and stop it afterwards."""
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def entries(client: aioredis.Redis, stream: str) -> list[dict[str, Any]]:
    """Every entry of `stream`, its `__data__` decoded as JSON."""
    found = []
    items: Any = await client.xrange(stream)
    for _, fields in items:
        found.append(json.loads(fields[b"__data__"]))
    return found


async def wait_for_entries(
    client: aioredis.Redis, stream: str, count: int = 1, timeout: float = 20.0
) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]]:
        found = await entries(client, stream)
        return found if len(found) >= count else []

    return await eventually(enough, timeout=timeout, what=f"{count} entries on {stream}")


async def pending(client: aioredis.Redis, stream: str, group: str) -> int:
    info = await client.xpending(stream, group)
    return int(info["pending"])
