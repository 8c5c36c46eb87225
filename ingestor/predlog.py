"""The prediction loggers: `predictions` (group `prediction-log`) → Parquet partitions of the
prediction log (shared/predlog.py), acked once they are durable.

Why no row is lost or held twice, even across a kill -9:

- A logger works on one batch at a time: it reads entries until the batch holds
  `flush_entries`, or `flush_s` have passed since its first, writes them, and acks them all.
  So its pending list is always exactly the batch in hand (or nothing).
- A batch's files are named by its first and last entry id, and hold only what the entries
  say (the time of a record is the entry's, not the clock's). Writing a batch again writes the
  same files with the same rows, each whole or not at all.
- After a crash, the pending list is the batch: a logger restarted under the same name reads
  it back first; under another name (the default: one per process), a live logger claims the
  dead one's whole pending list once it has been idle for a lease, and writes it as one batch.
  Either way the same files are written again, and the entries acked.

An entry that is not a valid PredictionsLogged goes to the dead-letter stream, with the
reason; one that Redis trimmed before it was written (MAXLEN, loggers down for long) is
counted as lost and logged, never skipped silently.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import redis.asyncio as aioredis
from pydantic import ValidationError

from ingestor.metrics import LogMetrics
from shared import predlog
from shared.batch_reading import BatchReader, Entry, keep_going
from shared.events import PredictionsLogged
from shared.wire import Refused, dead_letter, entry_body

GROUP = "prediction-log"
STREAM = PredictionsLogged.stream
log = logging.getLogger(__name__)


def compact(store_root: Path, entries: Sequence[Entry]) -> Compacted:
    """Write the records of `entries` as part files: one per model and day, all named by the
    batch's first and last id. Plain and synchronous (run in a thread)."""
    first, last = entries[0][0], entries[-1][0]
    events: dict[str, list[tuple[PredictionsLogged, str]]] = defaultdict(list)
    rejected: list[Refused] = []
    lost: list[str] = []
    for entry_id, fields in entries:
        if fields is None:
            lost.append(entry_id)
            continue
        try:
            event = PredictionsLogged.model_validate_json(entry_body(fields))
        except (ValidationError, ValueError) as exc:
            rejected.append(Refused.of(entry_id, fields, STREAM, exc))
            continue
        events[event.model_name].append((event, entry_id))
    written: dict[str, int] = {}
    paths: list[Path] = []
    for model, items in events.items():
        for day, table in predlog.by_day(predlog.online_table(items)).items():
            path = predlog.online_part(store_root, model, day, first, last)
            predlog.write_part(path, table)
            paths.append(path)
            written[model] = written.get(model, 0) + table.num_rows
    return Compacted(written, rejected, lost, paths)


@dataclass(frozen=True)
class Compacted:
    records: dict[str, int]  # per model
    rejected: list[Refused]  # entries for the dead-letter stream
    lost: list[str]
    paths: list[Path]


class PredictionLogger:
    """One logger; several (one per ingestor) share the stream through the group."""

    def __init__(
        self,
        client: aioredis.Redis,
        store_root: Path,
        consumer: str,
        *,
        flush_entries: int = 1000,
        flush_s: float = 2.0,
        lease_ms: int = 30_000,
        keep_days: int = 0,
        metrics: LogMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.store_root = store_root
        self.consumer = consumer
        self.flush_entries = flush_entries
        self.flush_s = flush_s
        self.lease_ms = lease_ms
        self.keep_days = keep_days
        self.metrics = metrics or LogMetrics()
        self.clock = clock
        self._pruned_at = -1e18
        self.reader = BatchReader(client, STREAM, GROUP, consumer, lease_ms, clock)

    async def run(self) -> None:
        await keep_going(self.reader, self.once, "the prediction logger")

    async def once(self, block_ms: int = 500) -> int:
        """Write one batch (this logger's pending one first, then a dead logger's, then new
        entries); the entries written."""
        entries = await self.reader.next_batch(self.flush_entries, self.flush_s, block_ms)
        if not entries:
            await self._prune()
            return 0
        done = await anyio.to_thread.run_sync(compact, self.store_root, entries)
        await self._settle(entries, done)
        await self._prune()
        return len(entries)

    async def _settle(self, entries: Sequence[Entry], done: Compacted) -> None:
        """Dead-letter the invalid entries, then ack every entry of the batch: its files are
        durable."""
        async with self.client.pipeline(transaction=True) as pipe:
            for refused in done.rejected:
                log.warning("dead-lettering %s %s: %s", STREAM, refused.message_id, refused.reason)
                dead_letter(pipe, STREAM, GROUP, refused)
            pipe.xack(STREAM, GROUP, *[entry_id for entry_id, _ in entries])
            await pipe.execute()
        for entry_id in done.lost:
            log.error(
                "log entry %s was trimmed from %s before it was written: lost", entry_id, STREAM
            )
        for model, records in done.records.items():
            self.metrics.records.labels(model).inc(records)
        written = len(entries) - len(done.rejected) - len(done.lost)
        self.metrics.entries.labels("written").inc(written)
        self.metrics.entries.labels("dead_lettered").inc(len(done.rejected))
        self.metrics.entries.labels("lost").inc(len(done.lost))

    async def _prune(self) -> None:
        """Retention: old date partitions removed, at most once an hour."""
        if self.keep_days <= 0 or self.clock() - self._pruned_at < 3600:
            return
        self._pruned_at = self.clock()
        removed = await anyio.to_thread.run_sync(predlog.prune, self.store_root, self.keep_days)
        for path in removed:
            log.info("prediction log: removed %s (older than %d days)", path, self.keep_days)
