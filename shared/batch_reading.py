"""Reading a stream one batch at a time, so that a consumer's pending list is always exactly
the batch in hand: what the prediction loggers and the label joiners build on.

A consumer that reads a batch, makes its effect durable under names derived from the batch's
entries, and acks it all, can be killed at any point: the same batch is found again, whole,
either in its own pending list (restarted under the same name) or in the pending list of the
dead consumer, which a live one claims whole once it has been idle for a lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from shared.broker import ensure_group

Entry = tuple[str, dict[bytes, bytes] | None]  # (id, fields); None: trimmed from the stream
log = logging.getLogger(__name__)


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class BatchReader:
    client: aioredis.Redis
    stream: str
    group: str
    consumer: str
    lease_ms: int
    clock: Callable[[], float] = time.monotonic

    async def next_batch(self, max_entries: int, flush_s: float, block_ms: int) -> list[Entry]:
        """This consumer's pending batch, else a dead consumer's, else new entries."""
        return (
            await self.own_pending()
            or await self.claim_abandoned()
            or await self.gather(max_entries, flush_s, block_ms)
        )

    async def own_pending(self) -> list[Entry]:
        """This consumer's pending entries, all of them (a batch it held when it stopped)."""
        found: list[Entry] = []
        after = "0"
        while True:
            reply: Any = await self.client.xreadgroup(
                self.group, self.consumer, {self.stream: after}, count=1000
            )
            items = [(text(mid), fields or None) for _, rows in reply or () for mid, fields in rows]
            if not items:
                return found
            found.extend(items)
            after = items[-1][0]

    async def claim_abandoned(self) -> list[Entry]:
        """The whole pending list of one consumer idle for a lease (it died holding a batch);
        entries trimmed from the stream meanwhile come back with no fields."""
        summary: Any = await self.client.xpending(self.stream, self.group)
        for holder in summary.get("consumers") or ():
            name, count = text(holder["name"]), int(holder["pending"])
            if name == self.consumer:
                continue
            pending: Any = await self.client.xpending_range(
                self.stream, self.group, "-", "+", count, consumername=name, idle=self.lease_ms
            )
            ids: list[Any] = [text(p["message_id"]) for p in pending]
            if not ids or len(ids) < count:
                continue  # not all of it idle: that consumer is alive
            claimed: Any = await self.client.xclaim(
                self.stream, self.group, self.consumer, self.lease_ms, ids
            )
            present = {text(mid): fields for mid, fields in claimed if fields}
            return [(i, present.get(i)) for i in ids]
        return []

    async def gather(self, max_entries: int, flush_s: float, block_ms: int) -> list[Entry]:
        """New entries: up to `max_entries`, or what came within `flush_s` of the first.

        After the first read, the stream is polled a few times a second rather than read as
        each entry lands: at hundreds of entries a second, a read per entry would cost more
        than the writing.
        """
        first: Any = await self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=max_entries, block=block_ms
        )
        entries = _items(first)
        started = self.clock()
        poll = min(0.25, flush_s / 4)
        while entries and len(entries) < max_entries:
            left = flush_s - (self.clock() - started)
            if left <= 0:
                break
            await asyncio.sleep(min(poll, left))
            more: Any = await self.client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=max_entries - len(entries)
            )
            entries.extend(_items(more))
        return entries


async def keep_going(reader: BatchReader, once: Callable[[], Awaitable[int]], what: str) -> None:
    """Run `once` (one batch; a negative count: the batch must wait) until cancelled, after
    creating the group. A failure (Redis or the disk away for a moment) leaves the batch
    pending, and the next pass takes it again."""
    await ensure_group(reader.client, reader.stream, reader.group)
    while True:
        try:
            if await once() < 0:
                await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; retrying", what)
            await asyncio.sleep(0.5)


def _items(reply: Any) -> list[Entry]:
    return [(text(mid), fields) for _, rows in reply or () for mid, fields in rows]
