"""Wait until replicas hold what this process wrote, before an ack makes it final.

Redis replicates asynchronously: a master that dies a moment after answering can take the
last writes with it, and the replica that takes over never saw them. A consumer that acked an
event after publishing its effect would then have lost the effect for good. With
`redis_wait_replicas` above 0, every ack first waits (Redis WAIT) until that many replicas of
every master have caught up.

WAIT counts the writes of the connection it is sent on. So the fence writes one small key on
each master and sends WAIT on the same connection, in one pipeline: that write comes after
everything this process wrote to that master before, and a replica that has it has those too.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

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
        """Return once `replicas` replicas of every master hold this process's writes; raise
        ReplicationLagging when they do not within `timeout_ms`."""
        if self.replicas == 0:
            return
        if not isinstance(self.client, RedisCluster):
            await self._wait(self.client, "streamops:fence", "redis")
            return
        cluster: Any = self.client
        await asyncio.gather(*(self._wait_on(node) for node in cluster.get_primaries()))

    async def aclose(self) -> None:
        for _, client in self._fences.values():
            await client.aclose()
        self._fences.clear()

    async def _wait_on(self, node: ClusterNode) -> None:
        fence = self._fences.get(node.name)
        if fence is None:
            key = self._key_on(node)
            connection: dict[str, Any] = dict(node.connection_kwargs)
            direct = aioredis.Redis(
                host=node.host,
                port=int(node.port),
                username=connection.get("username"),
                password=connection.get("password"),
                ssl=bool(connection.get("ssl")),
                single_connection_client=True,
            )
            fence = self._fences[node.name] = (key, direct)
        key, direct = fence
        try:
            await self._wait(direct, key, node.name)
        except ReplicationLagging:
            raise
        except Exception:
            # A failover moved the slot, or the master is gone: find the masters again next time.
            self._fences.pop(node.name, None)
            await direct.aclose()
            raise

    def _key_on(self, node: ClusterNode) -> str:
        cluster: Any = self.client
        for n in range(100_000):
            key = FENCE_KEY % n
            if cluster.get_node_from_key(key).name == node.name:
                return key
        raise ReplicationLagging(f"no slot of {node.name} found for a fence key")

    async def _wait(self, client: aioredis.Redis, key: str, where: str) -> None:
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(key, "1", ex=FENCE_TTL_S)
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
            _, acked = await pipe.execute()
        if int(acked) < self.replicas:
            raise ReplicationLagging(
                f"{acked} of {self.replicas} replicas of {where} confirmed within "
                f"{self.timeout_ms} ms"
            )
