"""Hand-written fakes for batch scoring's ports: the jobs' shared state and the publishers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.events import ScoreChunkRequested


@dataclass
class FakeJobs:
    """Jobs in dicts, as JobBook keeps them in Redis; planned chunks wait in `queued`."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    queued: list[ScoreChunkRequested] = field(default_factory=list)
    done: dict[str, set[int]] = field(default_factory=dict)

    async def exists(self, job_id: str) -> bool:
        return job_id in self.jobs

    async def status(self, job_id: str) -> str | None:
        status: str | None = self.jobs.get(job_id, {}).get("status")
        return status

    async def plan(self, fields: dict[str, Any], chunks: list[ScoreChunkRequested]) -> bool:
        job_id = chunks[0].job_id
        if job_id in self.jobs:
            return False
        self.jobs[job_id] = {**fields, "status": "planned"}
        self.queued.extend(chunks)
        return True

    async def record(self, fields: dict[str, Any]) -> None:
        self.jobs[str(fields["job_id"])] = dict(fields)

    async def chunk_done(self, job_id: str, chunk: int) -> tuple[int, str | None]:
        done = self.done.setdefault(job_id, set())
        done.add(chunk)
        return len(done), await self.status(job_id)

    async def finish(self, job_id: str, output_uri: str) -> None:
        self.jobs[job_id].update(status="done", output_uri=output_uri)


@dataclass
class RecordingPublisher:
    """Keeps what would have been published, in order."""

    published: list[Any] = field(default_factory=list)

    async def publish(self, message: Any) -> None:
        self.published.append(message)
