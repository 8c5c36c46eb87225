"""A plain redis-py client of the streams, as any outside producer would write it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis

from shared.broker import is_cluster
from shared.events import DataArrived, DataIngested, DataRejected, Event
from shared.jobs import JobStatus, done_key, job_key, parse_status
from shared.keys import progress_key
from shared.wire import DATA_FIELD, entry_fields, text

Outcome = DataIngested | DataRejected


def stream_ends(client: redis.Redis, streams: tuple[str, ...]) -> dict[str, str]:
    """The id of the newest entry of each stream: reading after it sees only what is new."""
    ends = {}
    for stream in streams:
        last = client.xrevrange(stream, count=1)
        ends[stream] = text(last[0][0]) if last else "0-0"
    return ends


def publish(client: redis.Redis, event: Event) -> str:
    """XADD `event` to its stream; the entry id."""
    fields: Any = entry_fields(event)
    return text(client.xadd(event.stream, fields))


def wait_for_outcome(
    client: redis.Redis,
    correlation_id: str,
    after: dict[str, str],
    timeout: float,
    on_tick: Callable[[], None] | None = None,
) -> Outcome | None:
    """The data-ingested or data-rejected event of flow `correlation_id`, or None in time.
    `on_tick` is called about twice a second while waiting."""
    kinds: dict[str, type[Outcome]] = {
        DataIngested.stream: DataIngested,
        DataRejected.stream: DataRejected,
    }
    cursors: Any = {s: after.get(s, "0-0") for s in kinds}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if on_tick is not None:
            on_tick()
        for stream, items in _xread(client, cursors, block_ms=500):
            for item_id, fields in items:
                cursors[stream] = item_id
                body = json.loads(fields[DATA_FIELD.encode()])
                if body.get("correlation_id") == correlation_id:
                    return kinds[text(stream)].model_validate(body)
    return None


def progress(client: redis.Redis, correlation_id: str) -> tuple[int, int | None] | None:
    """How far the ingestor has got with flow `correlation_id`: (done, total or None)."""
    fields: Any = client.hgetall(progress_key(correlation_id))
    if not fields:
        return None
    total = int(fields[b"total"])
    return int(fields[b"done"]), None if total < 0 else total


def ingest_and_wait(client: redis.Redis, event: DataArrived, timeout: float) -> Outcome | None:
    after = stream_ends(client, (DataIngested.stream, DataRejected.stream))
    publish(client, event)
    return wait_for_outcome(client, event.correlation_id, after, timeout)


# --- batch scoring -----------------------------------------------------------------------------


def score_status(client: redis.Redis, job_id: str) -> JobStatus | None:
    """Where scoring job `job_id` stands (see shared.jobs), or None if there is no such job."""
    with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(job_key(job_id))
        pipe.scard(done_key(job_id))
        fields, done = pipe.execute()
    return parse_status(job_id, fields, int(done))


def wait_for_job(
    client: redis.Redis,
    job_id: str,
    timeout: float,
    on_progress: Callable[[JobStatus], None] | None = None,
    interval: float = 0.2,
) -> JobStatus | None:
    """The job's final status (done or rejected), or None if it did not settle in time;
    `on_progress` gets every status seen on the way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = score_status(client, job_id)
        if status is not None:
            if on_progress is not None:
                on_progress(status)
            if status.status in ("done", "rejected"):
                return status
        time.sleep(interval)
    return None


def _xread(client: redis.Redis, cursors: dict[str, str], block_ms: int) -> list[Any]:
    """XREAD of several streams; on a cluster (different slots) one stream at a time."""
    if not is_cluster(client):
        reply: Any = client.xread(cursors, block=block_ms)  # type: ignore[arg-type]
        return list(reply or ())
    each = max(1, block_ms // len(cursors))
    found: list[Any] = []
    for stream, cursor in cursors.items():
        reply = client.xread({stream: cursor}, block=each)
        found.extend(reply or ())
    return found
