"""Wait until replicas hold what this process wrote, before an ack makes it final.

Redis replicates asynchronously: a master that dies a moment after answering can take the
last writes with it, and the replica that takes over never saw them. A consumer that acked an
event after publishing its effect would then have lost the effect for good. With
`redis_wait_replicas` above 0, every ack first waits (Redis WAIT) until that many replicas of
every master have caught up.

WAIT counts the writes of the connection it is sent on. So the fence writes one small key on
each master and sends WAIT on the same connection: that write comes after everything this
process wrote to that master before, and a replica that has it has those too.

A master is waited for by as many replicas as it has, if fewer than asked. On a cluster that
is the replicas the cluster's map gives it, connected or not (or the replicas in sync, if more):
a replica cut off from its master but alive could still take over, so acks stall (and are
retried) rather than be lost. A replica the cluster marked failed is not in the map: a shard
whose master has just failed over (its new master has no replica until the old one comes back)
goes on acking. A single Redis counts the replicas in sync (`INFO replication`), so the default
(1) costs a Redis without replicas two round trips per ack and never blocks it. The loss that
remains: a replica marked failed, then back, then promoted after its master dies, before it
caught up (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from shared.broker import node_client, one_connection
from shared.errors import ReplicationLagging

FENCE_KEY = "streamops:fence:{%d}"
FENCE_TTL_S = 60


@dataclass
class Replication:
    client: aioredis.Redis
    replicas: int
    timeout_ms: int
    # Per master (host:port): a fence key on one of its slots, and a one-connection client.
    _fences: dict[str, tuple[str, aioredis.Redis]] = field(default_factory=dict)

    async def settle(self) -> None:
        """Return once `replicas` replicas of every master (as many as it has in sync, if
        fewer) hold this process's writes; raise ReplicationLagging when they do not within
        `timeout_ms`."""
        if self.replicas == 0:
            return
        if not isinstance(self.client, RedisCluster):
            await self._wait(self._single(), "streamops:fence", "redis")
            return
        cluster: Any = self.client
        await asyncio.gather(*(self._wait_on(node) for node in cluster.get_primaries()))

    async def aclose(self) -> None:
        for _, client in self._fences.values():
            await client.aclose()
        self._fences.clear()

    def _single(self) -> aioredis.Redis:
        fence = self._fences.get("redis")
        if fence is None:
            pool = self.client.connection_pool
            direct = one_connection(pool.connection_class, pool.connection_kwargs)
            fence = self._fences["redis"] = ("streamops:fence", direct)
        return fence[1]

    async def _wait_on(self, node: ClusterNode) -> None:
        fence = self._fences.get(node.name)
        if fence is None:
            direct = node_client(
                node,
                socket_connect_timeout=self.timeout_ms / 1000,
                socket_timeout=self.timeout_ms / 1000 + 1,
            )
            fence = self._fences[node.name] = (self._key_on(node), direct)
        key, direct = fence
        cluster: Any = self.client
        shard = cluster.nodes_manager.slots_cache.get(cluster.keyslot(key), [node])
        try:
            await self._wait(direct, key, node.name, mapped=len(shard) - 1)
        except ReplicationLagging:
            raise
        except Exception as exc:
            # The master is gone, or a failover moved its slots: ask the cluster who the
            # masters are now, as the client's own commands may not have run into it yet.
            self._fences.pop(node.name, None)
            await direct.aclose()
            with contextlib.suppress(Exception):
                await self.client.nodes_manager.initialize()  # type: ignore[attr-defined]
            raise ReplicationLagging(f"{node.name} did not answer the fence: {exc!r}") from exc

    def _key_on(self, node: ClusterNode) -> str:
        cluster: Any = self.client
        for n in range(100_000):
            key = FENCE_KEY % n
            if cluster.get_node_from_key(key).name == node.name:
                return key
        raise ReplicationLagging(f"no slot of {node.name} found for a fence key")

    async def _wait(
        self, direct: aioredis.Redis, key: str, where: str, mapped: int | None = None
    ) -> None:
        """On `direct`'s one connection: the fence write, then WAIT for the replicas in sync.

        Command by command: a pipeline would take a connection of its own from the pool, and a
        WAIT on a connection that wrote nothing returns at once."""
        await direct.set(key, "1", ex=FENCE_TTL_S)
        info: Any = await direct.info("replication")
        # The larger of the two: a map read before a replica joined would say none.
        wanted = min(self.replicas, max(mapped or 0, in_sync(info)))
        if wanted == 0:
            return
        acked = await direct.wait(wanted, self.timeout_ms)
        if int(acked) < wanted:
            raise ReplicationLagging(
                f"{acked} of {wanted} replicas of {where} confirmed within {self.timeout_ms} ms"
            )


def in_sync(info: dict[str, Any]) -> int:
    """The replicas of a master in sync, from its `INFO replication`."""
    count = int(info.get("connected_slaves", 0))
    return sum(1 for n in range(count) if info.get(f"slave{n}", {}).get("state") == "online")
