"""Hand-written fakes for the ports services depend on."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from faststream.redis import RedisBroker
from faststream.redis.testing import PEL


@dataclass
class FakeLedger:
    """In-memory delivery bookkeeping: what the Redis ledger would have recorded."""

    counts: dict[str, int] = field(default_factory=dict)
    done: set[uuid.UUID] = field(default_factory=set)
    acked: list[str] = field(default_factory=list)
    letters: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    renewed: list[str] = field(default_factory=list)

    async def delivery_count(self, message_id: str) -> int:
        self.counts[message_id] = self.counts.get(message_id, 0) + 1
        return self.counts[message_id]

    async def is_done(self, event_id: uuid.UUID) -> bool:
        return event_id in self.done

    async def ack(self, message_id: str, done: uuid.UUID | None = None) -> None:
        if done is not None:
            self.done.add(done)
        self.acked.append(message_id)

    async def dead_letter(self, message_id: str, letter: dict[str, Any]) -> None:
        self.letters.append(letter)
        self.acked.append(message_id)

    async def record_error(self, message_id: str, error: str) -> None:
        self.errors[message_id] = error

    async def last_error(self, message_id: str) -> str | None:
        return self.errors.get(message_id)

    async def renew(self, message_id: str) -> None:
        self.renewed.append(message_id)


class NoPendingEntries(PEL):
    """TestRedisBroker's pending-entries list, for handlers that ack by themselves.

    FastStream's test broker keys pending entries by the FastStream correlation id, which the
    JSON wire format does not carry; and it replays pending entries to reclaim (XAUTOCLAIM)
    subscribers at once. In memory nothing is ever idle, so nothing is kept pending: the
    reclaim path is tested against a real Redis (tests/integration).
    """

    def _put(self, msg: Any, handler: Any, correlation_id: Any) -> None:
        return None

    def _remove(self, correlation_id: Any) -> None:
        return None


@dataclass
class FakeStatusBoard:
    """Records progress and heartbeats instead of writing them to Redis."""

    progress_reports: list[tuple[str, int, int | None]] = field(default_factory=list)
    heartbeats: list[tuple[str, str]] = field(default_factory=list)
    # What each heartbeat said besides (a predictor: the models and schemas it serves).
    details: list[dict[str, Any] | None] = field(default_factory=list)

    async def progress(self, flow: str, done: int, total: int | None) -> None:
        self.progress_reports.append((flow, done, total))

    async def heartbeat(
        self, service: str, consumer: str, ttl_s: int, details: dict[str, Any] | None = None
    ) -> None:
        self.heartbeats.append((service, consumer))
        self.details.append(details)


def published(broker: RedisBroker, *streams: str) -> dict[str, list[Any]]:
    """Every body the app publishes on `streams`, by stream, as the test broker delivers them
    (subscribe before the broker starts)."""
    seen: dict[str, list[Any]] = {stream: [] for stream in streams}
    for stream in streams:
        broker.subscriber(stream=stream)(_collector(seen[stream]))
    return seen


def _collector(bodies: list[Any]) -> Callable[[dict[str, Any]], Awaitable[None]]:
    async def collect(body: dict[str, Any]) -> None:
        bodies.append(body)

    return collect
