"""Broker wiring: the FastStream broker with the JSON wire format, and a plain Redis client."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from faststream.redis import RedisBroker
from redis.exceptions import ResponseError

from shared.settings import CommonSettings
from shared.wire import JsonMessageFormat

log = logging.getLogger(__name__)


def redis_url(settings: CommonSettings) -> str:
    """The Redis URL with `redis_password` in it, when one is set apart from the URL."""
    if settings.redis_password is None:
        return settings.redis_url
    parts = urlsplit(settings.redis_url)
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    secret = quote(settings.redis_password.get_secret_value(), safe="")
    return urlunsplit(parts._replace(netloc=f"{quote(user)}:{secret}@{host}"))


def build_broker(settings: CommonSettings, middlewares: Sequence[Any] = ()) -> RedisBroker:
    """A broker that reads and writes plain JSON entries (see shared.wire)."""
    return RedisBroker(
        redis_url(settings),
        message_format=JsonMessageFormat,
        logger=logging.getLogger("streamops.broker"),
        middlewares=tuple(middlewares),
    )


def redis_client(settings: CommonSettings) -> aioredis.Redis:
    """A plain async Redis client for what FastStream does not do (XPENDING, XCLAIM, DLQ)."""
    client: aioredis.Redis = aioredis.Redis.from_url(redis_url(settings))
    return client


async def ensure_group(client: aioredis.Redis, stream: str, group: str) -> None:
    """Create `group` on `stream` reading from the start, so no backlog is missed.

    FastStream creates missing groups at `$` (only new entries): entries published before the
    first consumer started would never be read.
    """
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        log.info("created consumer group %s on %s", group, stream)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def fan_out_start(now: float) -> str:
    """Where a fan-out subscriber (XREAD, no group) starts reading: the stream id of the
    millisecond before `now`, so it gets every entry added from then on.

    Not "$": FastStream keeps reading from "$" until the first entry arrives, and each XREAD
    with "$" sees only what is added while it blocks. An entry added between two reads (when
    one block times out and the next read is sent, or while the event loop is busy) is lost.
    A replica then missed a promotion until its next converge, up to 10 s later. Stream ids
    come from Redis' clock: a replica whose clock runs ahead of the server's skips what is added
    in that lead after it starts, and the converge catches up on that too."""
    return f"{int(now * 1000) - 1}-0"
