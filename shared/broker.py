"""Broker wiring: the FastStream broker with the JSON wire format, and plain Redis clients.

With `redis_cluster_nodes` set, each is its Redis Cluster kind (FastStream's
RedisClusterBroker, redis-py's RedisCluster): the rest of the code does not know which it has.
The key layout that makes that work is in shared/keys.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from faststream.redis import RedisBroker, RedisClusterBroker
from redis.asyncio.cluster import ClusterNode as AsyncNode
from redis.asyncio.cluster import RedisCluster as AsyncCluster
from redis.cluster import ClusterNode as SyncNode
from redis.cluster import RedisCluster as SyncCluster
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


def cluster_nodes(settings: CommonSettings) -> list[tuple[str, int]]:
    """The cluster's seed nodes as (host, port); empty when Redis is not a cluster."""
    nodes = []
    for node in settings.redis_cluster_nodes:
        host, _, port = node.rpartition(":")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def build_broker(settings: CommonSettings, middlewares: Sequence[Any] = ()) -> RedisBroker:
    """A broker that reads and writes plain JSON entries (see shared.wire)."""
    options: dict[str, Any] = {
        "message_format": JsonMessageFormat,
        "logger": logging.getLogger("streamops.broker"),
        "middlewares": tuple(middlewares),
    }
    if nodes := cluster_nodes(settings):
        return RedisClusterBroker(_cluster_url(settings), startup_nodes=nodes, **options)
    return RedisBroker(redis_url(settings), **options)


def redis_client(settings: CommonSettings) -> aioredis.Redis:
    """A plain async Redis client for what FastStream does not do (XPENDING, XCLAIM, DLQ)."""
    if nodes := cluster_nodes(settings):
        cluster = AsyncCluster(
            startup_nodes=[AsyncNode(host, port) for host, port in nodes], **_credentials(settings)
        )
        # RedisCluster speaks the same commands; one type keeps every signature simple.
        return cast(aioredis.Redis, cluster)
    client: aioredis.Redis = aioredis.Redis.from_url(redis_url(settings))
    return client


def sync_redis_client(settings: CommonSettings) -> redis.Redis:
    """The blocking twin of `redis_client`, for the CLI and the gateway's few sync reads."""
    if nodes := cluster_nodes(settings):
        seeds = [SyncNode(host, port) for host, port in nodes]  # type: ignore[no-untyped-call]
        cluster = SyncCluster(startup_nodes=seeds, **_credentials(settings))
        return cast(redis.Redis, cluster)
    client: redis.Redis = redis.Redis.from_url(redis_url(settings))
    return client


def one_connection(
    connection_class: type[Any], connection_kwargs: dict[str, Any], **overrides: Any
) -> aioredis.Redis:
    """A client on one connection of its own, made as a pool's or a cluster node's are (host,
    credentials, TLS by the connection class), for what must stay on one connection: WAIT
    after a write, a Pub/Sub subscription. `overrides`: connection options (timeouts)."""
    pool = aioredis.ConnectionPool(
        connection_class=connection_class, **{**connection_kwargs, **overrides}
    )
    return aioredis.Redis(connection_pool=pool, single_connection_client=True)


def node_client(node: AsyncNode, **overrides: Any) -> aioredis.Redis:
    """`one_connection` to a node of a cluster."""
    return one_connection(node.connection_class, node.connection_kwargs, **overrides)


def is_cluster(client: object) -> bool:
    return isinstance(client, AsyncCluster | SyncCluster)


def _credentials(settings: CommonSettings) -> dict[str, Any]:
    """What a cluster client takes from the URL: credentials and TLS (its host is a seed)."""
    parts = urlsplit(redis_url(settings))
    found: dict[str, Any] = {"ssl": parts.scheme == "rediss"}
    if parts.username:
        found["username"] = unquote(parts.username)
    if parts.password:
        found["password"] = unquote(parts.password)
    return found


def _cluster_url(settings: CommonSettings) -> str:
    """The URL FastStream's cluster broker parses for credentials, pointed at the first seed
    (its own host would be taken as one more seed)."""
    parts = urlsplit(redis_url(settings))
    host, port = cluster_nodes(settings)[0]
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc, path=""))


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


async def xread_all(
    client: aioredis.Redis, ids: dict[str, str], count: int, block_ms: int | None
) -> list[Any]:
    """XREAD of several streams. On a cluster they live on different slots, which one XREAD
    cannot span: each is read on its own, at once, and the replies are put together."""
    if not is_cluster(client) or len(ids) == 1:
        reply: Any = await client.xread(ids, count=count, block=block_ms)  # type: ignore[arg-type]
        return list(reply or ())
    replies = await asyncio.gather(
        *(client.xread({s: i}, count=count, block=block_ms) for s, i in ids.items())
    )
    return [stream for reply in replies for stream in reply or ()]
