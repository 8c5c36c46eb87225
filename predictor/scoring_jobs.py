"""A scoring job's state in Redis, written by the predictor replicas (layout: shared/jobs.py).

- Planning creates the job hash and XADDs every chunk entry in one MULTI, only if the hash does
  not exist yet (WATCH): a redelivered `score-requested` never makes a second set of chunks.
- A written chunk is SADDed to the job's done set; the set's size says whether the job is
  complete, whoever's SADD it was, so a chunk retried after its replica died still finishes
  the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from shared.delivery import RedisLedger
from shared.events import ScoreChunkRequested, ScoreRejected, derived_event_id
from shared.jobs import done_key, job_key
from shared.wire import DATA_FIELD, entry_fields, text


def _now() -> str:
    return datetime.now(UTC).isoformat()


# KEYS: the job hash, the chunks stream. ARGV: ttl, the entry field, n, n job fields and values,
# then one payload per chunk. Nothing is written when the job exists already.
_PLAN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 4, 3 + n))
redis.call('EXPIRE', KEYS[1], ARGV[1])
for i = 4 + n, #ARGV do redis.call('XADD', KEYS[2], '*', ARGV[2], ARGV[i]) end
return 1
"""


@dataclass(frozen=True)
class JobBook:
    client: aioredis.Redis
    ttl_s: int

    async def exists(self, job_id: str) -> bool:
        return bool(await self.client.exists(job_key(job_id)))

    async def status(self, job_id: str) -> str | None:
        value: Any = await self.client.hget(job_key(job_id), "status")
        return None if value is None else text(value)

    async def plan(self, fields: dict[str, Any], chunks: list[ScoreChunkRequested]) -> bool:
        """Create the job and queue its chunks, atomically; False when the job already exists."""
        # One script, not WATCH + MULTI: a cluster pipeline sends nothing between WATCH and
        # MULTI, so the EXISTS could not be read there. The job and `score-chunks` share a slot.
        job = {**fields, "status": "planned", "updated_at": _now()}
        pairs = [str(part) for item in job.items() for part in item]
        payloads = [entry_fields(chunk)[DATA_FIELD] for chunk in chunks]
        keys = [job_key(chunks[0].job_id), ScoreChunkRequested.stream]
        args: list[Any] = [self.ttl_s, DATA_FIELD, len(pairs), *pairs, *payloads]
        created: Any = await self.client.eval(_PLAN, len(keys), *keys, *args)
        return bool(created)

    async def record(self, fields: dict[str, Any]) -> None:
        """Write a finished or rejected job (one without chunks) in one go."""
        key = job_key(str(fields["job_id"]))
        async with self.client.pipeline(transaction=True) as pipe:
            job: Any = {**fields, "updated_at": _now()}
            pipe.hset(key, mapping=job)
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def chunk_done(self, job_id: str, chunk: int) -> tuple[int, str | None]:
        """Record chunk `chunk` as written: (chunks done so far, the job's status)."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.sadd(done_key(job_id), chunk)
            pipe.expire(done_key(job_id), self.ttl_s)
            pipe.scard(done_key(job_id))
            pipe.hget(job_key(job_id), "status")
            pipe.hset(job_key(job_id), "updated_at", _now())
            _, _, count, status, _ = await pipe.execute()
        return int(count), None if status is None else text(status)

    async def fail(self, chunk: ScoreChunkRequested, reason: str) -> None:
        """Publish `score-rejected` (same id as a refusal would have: one job, one rejection),
        then mark the job rejected. Two commands, as the event's stream and the job live on
        different cluster slots: a crash between them leaves the chunk pending, and its retry
        does both again under the same event id, which consumers take once."""
        event = ScoreRejected(
            event_id=derived_event_id("score-rejected", chunk.job_id),
            correlation_id=chunk.correlation_id,
            job_id=chunk.job_id,
            model_name=chunk.model_name,
            reason=reason,
        )
        fields: Any = {"status": "rejected", "error": reason, "updated_at": _now()}
        await self.client.xadd(event.stream, entry_fields(event))  # type: ignore[arg-type]
        await self.client.hset(job_key(chunk.job_id), mapping=fields)

    async def finish(self, job_id: str, output_uri: str) -> None:
        await self.client.hset(
            job_key(job_id),
            mapping={"status": "done", "output_uri": output_uri, "updated_at": _now()},
        )


@dataclass(frozen=True)
class ChunkLedger(RedisLedger):
    """The ledger of `score-chunks`: a chunk given up on (dead-lettered) fails its job, marked
    rejected with `score-rejected` published, so nobody waits for it forever."""

    jobs: JobBook | None = None

    async def dead_letter(self, message_id: str, letter: dict[str, Any]) -> None:
        await super().dead_letter(message_id, letter)
        try:
            chunk = ScoreChunkRequested.model_validate_json(letter["payload"][DATA_FIELD])
        except (KeyError, ValueError):  # not even a chunk: there is no job to fail
            return
        if self.jobs is not None:
            reason = f"chunk {chunk.chunk} failed: {letter['reason']}"
            await self.jobs.fail(chunk, reason)
