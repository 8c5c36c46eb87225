"""Scoring jobs as Redis keeps them: what the predictor writes, what the gateway and CLI read.

A job is a hash `streamops:score:{score-chunks}:<job_id>` (status, model, version, rows, chunks,
output, error) and a set `streamops:score:{score-chunks}:<job_id>:done` of the chunk indexes
whose part file is written. The hash tag keeps them on the slot of `score-chunks`, so a job and
its chunks' entries are planned in one MULTI on Redis Cluster too (shared/keys.py). The
hash is created once, when the job is planned or rejected; the number of done chunks is the
set's size, so progress needs no read-modify-write of the hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import redis.asyncio as aioredis
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.events import ScoreChunkRequested
from shared.keys import hash_tag
from shared.wire import text

JobState = Literal["planned", "running", "done", "rejected"]


_TAG = hash_tag(ScoreChunkRequested.stream)


def job_key(job_id: str) -> str:
    return f"streamops:score:{_TAG}:{job_id}"


def done_key(job_id: str) -> str:
    return f"{job_key(job_id)}:done"


class JobStatus(BaseModel):
    """Where a scoring job stands."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str = Field(description="Client-chosen job id.")
    status: JobState = Field(description="planned, running (a chunk is done), done or rejected.")
    model_name: str = Field(description="Registered model name.")
    model_version: int | None = Field(default=None, description="Version pinned for the job.")
    rows: int = Field(default=0, ge=0, description="Input rows.")
    chunks: int = Field(default=0, ge=0, description="Chunks the job was split into.")
    chunks_done: int = Field(default=0, ge=0, description="Chunks whose results are written.")
    output_uri: str | None = Field(default=None, description="The results, once done.")
    error: str | None = Field(default=None, description="Why the job was rejected.")
    updated_at: AwareDatetime = Field(description="Last change of the job's hash.")


def parse_status(job_id: str, fields: Mapping[Any, Any], chunks_done: int) -> JobStatus | None:
    """The status from the hash's fields (bytes or str) and the done set's size."""
    if not fields:
        return None
    raw = {text(k): text(v) for k, v in fields.items()}
    status = raw.get("status", "planned")
    if status == "planned" and chunks_done > 0:
        status = "running"
    version = raw.get("model_version")
    return JobStatus(
        job_id=job_id,
        status=status,
        model_name=raw.get("model_name", ""),
        model_version=int(version) if version else None,
        rows=int(raw.get("rows", 0)),
        chunks=int(raw.get("chunks", 0)),
        chunks_done=chunks_done,
        output_uri=raw.get("output_uri") or None,
        error=raw.get("error") or None,
        updated_at=raw.get("updated_at") or datetime.now(UTC),
    )


async def job_status(client: aioredis.Redis, job_id: str) -> JobStatus | None:
    """The job's status, or None when no job has that id (or it expired)."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(job_key(job_id))
        pipe.scard(done_key(job_id))
        fields, done = await pipe.execute()
    return parse_status(job_id, fields, int(done))
