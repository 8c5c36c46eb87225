"""The label joiners: `labels-arrived` (group `label-join`) → labels joined to the prediction
log (shared/labels.py), acked once the files are durable.

One batch at a time (shared/batch_reading.py), so a joiner killed at any point leaves a batch
that is joined again whole, into the same files. A label whose request is not in the log yet
may only be early (the loggers write every couple of seconds): a batch with such labels waits
until its newest event is `grace_s` old; then its unknown labels are written apart
(`unmatched/`), counted, and logged, never dropped.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio.to_thread
import pyarrow as pa
import pyarrow.compute as pc
import redis.asyncio as aioredis
from pydantic import ValidationError

from ingestor.metrics import LabelMetrics
from shared import labels, predlog
from shared.batch_reading import BatchReader, Entry, keep_going
from shared.events import LabelsArrived
from shared.wire import Refused, dead_letter, entry_body

GROUP = "label-join"
STREAM = LabelsArrived.stream
log = logging.getLogger(__name__)


@dataclass
class Joined:
    """What a batch came to: per model, rows joined and unmatched; entries refused."""

    joined: dict[str, int] = field(default_factory=dict)
    unmatched: dict[str, int] = field(default_factory=dict)
    rejected: list[Refused] = field(default_factory=list)
    waiting: bool = False  # labels of unknown requests, too young to give up on


def parse(entries: Sequence[Entry]) -> tuple[list[tuple[LabelsArrived, str]], Joined]:
    events: list[tuple[LabelsArrived, str]] = []
    outcome = Joined()
    for entry_id, fields in entries:
        if fields is None:
            log.error("labels entry %s was trimmed from %s before it was joined", entry_id, STREAM)
            continue
        try:
            events.append((LabelsArrived.model_validate_json(entry_body(fields)), entry_id))
        except (ValidationError, ValueError) as exc:
            outcome.rejected.append(Refused.of(entry_id, fields, STREAM, exc))
    return events, outcome


def join_batch(
    store_root: Path, entries: Sequence[Entry], *, now: datetime, grace_s: float
) -> Joined:
    """Join a batch's labels to the log and write them (plain and synchronous: run in a
    thread); nothing is written while some label may only be early."""
    events, outcome = parse(entries)
    first, last = entries[0][0], entries[-1][0]
    by_model: dict[str, list[tuple[LabelsArrived, str]]] = defaultdict(list)
    for event, entry_id in events:
        by_model[event.model_name].append((event, entry_id))
    results: dict[str, tuple[pa.Table, pa.Table]] = {}
    shadowed: dict[str, pa.Table] = {}
    for model, items in by_model.items():
        table = labels.label_table(items)
        answered, said = labels.lookup(store_root, model, table["request_id"].to_pylist())
        results[model] = labels.join(table, answered)
        # What a challenger said of the same rows, judged by the same labels (a label whose
        # request was not shadowed, or not logged yet, judges production only).
        shadowed[model], _ = labels.join(table, said)
    newest = max((e.occurred_at for e, _ in events), default=now)
    if any(u.num_rows for _, u in results.values()) and (now - newest).total_seconds() < grace_s:
        outcome.waiting = True
        return outcome
    for model, (matched, unmatched) in results.items():
        _write_joined(store_root, model, matched, first, last)
        _write_joined(store_root, model, shadowed[model], first, last, shadow=True)
        if unmatched.num_rows:
            predlog.write_part(labels.unmatched_part(store_root, model, first, last), unmatched)
            log.warning(
                "%d label(s) of %s match no logged prediction (unknown request id or row), "
                "e.g. %s: kept in %s",
                unmatched.num_rows,
                model,
                unmatched["request_id"][0].as_py(),
                labels.unmatched_part(store_root, model, first, last),
            )
        outcome.joined[model] = matched.num_rows
        outcome.unmatched[model] = unmatched.num_rows
    return outcome


def _write_joined(
    store_root: Path, model: str, matched: pa.Table, first: str, last: str, *, shadow: bool = False
) -> None:
    """One part per day the labels arrived on, named by the batch."""
    days = pc.cast(matched["labelled_at"], pa.date32()) if matched.num_rows else None
    for day in pc.unique(days).to_pylist() if days is not None else ():
        part = matched.filter(pc.equal(days, pa.scalar(day, pa.date32())))
        path = labels.joined_part(store_root, model, day, first, last, shadow=shadow)
        predlog.write_part(path, part)


class LabelJoiner:
    """One joiner; several (one per ingestor) share the stream through the group."""

    def __init__(
        self,
        client: aioredis.Redis,
        store_root: Path,
        consumer: str,
        *,
        grace_s: float = 30.0,
        lease_ms: int = 30_000,
        metrics: LabelMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.store_root = store_root
        self.grace_s = grace_s
        self.metrics = metrics or LabelMetrics()
        self.reader = BatchReader(client, STREAM, GROUP, consumer, lease_ms, clock)

    async def run(self) -> None:
        await keep_going(self.reader, self.once, "the label joiner")

    async def once(self, block_ms: int = 500) -> int:
        """Join one batch; the entries settled, -1 when the batch waits for its grace."""
        entries = await self.reader.next_batch(100, 0.5, block_ms)
        if not entries:
            return 0
        now = datetime.now(UTC)
        done = await anyio.to_thread.run_sync(
            lambda: join_batch(self.store_root, entries, now=now, grace_s=self.grace_s)
        )
        if done.waiting:
            return -1
        async with self.client.pipeline(transaction=True) as pipe:
            for refused in done.rejected:
                log.warning("dead-lettering %s %s: %s", STREAM, refused.message_id, refused.reason)
                dead_letter(pipe, STREAM, GROUP, refused)
            pipe.xack(STREAM, GROUP, *[entry_id for entry_id, _ in entries])
            await pipe.execute()
        for model, count in done.joined.items():
            self.metrics.labels.labels(model, "joined").inc(count)
        for model, count in done.unmatched.items():
            self.metrics.labels.labels(model, "unmatched").inc(count)
        return len(entries)
