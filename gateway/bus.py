"""What the gateway's handlers do with Redis besides predicting: publish events, read jobs.

A Redis outage becomes `StreamsUnavailable` here, so it is answered 503 with the error body
like any other named error, instead of escaping as a 500.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.errors import StreamsUnavailable
from shared.events import Event
from shared.jobs import JobStatus, job_status
from shared.wire import entry_fields


class RedisBus:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def publish(self, event: Event) -> str:
        try:
            message_id = await self.client.xadd(event.stream, entry_fields(event))  # type: ignore[arg-type]
        except RedisError as exc:
            raise StreamsUnavailable(f"cannot publish on {event.stream}: {exc}") from exc
        return message_id.decode() if isinstance(message_id, bytes) else str(message_id)

    async def job(self, job_id: str) -> JobStatus | None:
        try:
            return await job_status(self.client, job_id)
        except RedisError as exc:
            raise StreamsUnavailable(f"cannot read scoring job {job_id!r}: {exc}") from exc

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except RedisError:
            return False
