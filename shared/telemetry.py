"""Logging, liveness and progress, set up the same way in every service (metrics:
shared/metrics.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import redis.asyncio as aioredis

from shared.aio import every
from shared.keys import heartbeat_key, progress_key

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"

PROGRESS_TTL_S = 3600


def configure_logging(level: str = "INFO") -> None:
    """One line per record on stderr; idempotent, so tests can build several apps."""
    root = logging.getLogger()
    if not any(getattr(h, "_streamops", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._streamops = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


class CriticalSeen(logging.Handler):
    """Remembers whether anything was logged at CRITICAL: FastStream stops a subscriber for
    good (e.g. its consumer group vanished with a Redis restart) with a CRITICAL record and a
    clean exit, and a supervisor must see a failure to restart the service."""

    def __init__(self) -> None:
        super().__init__(level=logging.CRITICAL)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen = True


class StatusBoard(Protocol):
    """Where services say they are alive and how far a long job has got."""

    async def progress(self, flow: str, done: int, total: int | None) -> None: ...

    async def heartbeat(
        self, service: str, consumer: str, ttl_s: int, details: dict[str, Any] | None = None
    ) -> None: ...


@dataclass(frozen=True)
class RedisStatusBoard:
    client: aioredis.Redis

    async def progress(self, flow: str, done: int, total: int | None) -> None:
        key = progress_key(flow)
        fields = {
            "done": done,
            "total": -1 if total is None else total,
            "updated_at": datetime.now(UTC).isoformat(),
        }
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(key, PROGRESS_TTL_S)
            await pipe.execute()

    async def heartbeat(
        self, service: str, consumer: str, ttl_s: int, details: dict[str, Any] | None = None
    ) -> None:
        value = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "at": datetime.now(UTC).isoformat(),
                **(details or {}),
            }
        )
        await self.client.set(heartbeat_key(service, consumer), value, ex=ttl_s)


class ProgressRelay:
    """Carries progress from a worker thread to the status board, at most every `interval`."""

    def __init__(self, board: StatusBoard, flow: str, interval: float = 0.5) -> None:
        self._board = board
        self._flow = flow
        self._interval = interval
        self._latest: tuple[int, int | None] | None = None
        self._sent: tuple[int, int | None] | None = None

    def report(self, done: int, total: int | None) -> None:
        """Thread-safe: one tuple assignment."""
        self._latest = (done, total)

    async def _send(self) -> None:
        latest = self._latest
        if latest is not None and latest != self._sent:
            await self._board.progress(self._flow, *latest)
            self._sent = latest

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ProgressRelay]:
        async with every(self._interval, self._send, f"reporting progress of {self._flow}"):
            yield self
        with contextlib.suppress(Exception):  # progress is a courtesy, never a failure
            await self._send()


async def beat(
    board: StatusBoard,
    service: str,
    consumer: str,
    interval: float = 5.0,
    details: Callable[[], dict[str, Any]] | None = None,
    *,
    now: asyncio.Event | None = None,
) -> None:
    """Say `consumer` of `service` is alive, every `interval` seconds, until cancelled;
    `details` adds what the service wants others to know (a predictor: the versions it serves).
    Setting `now` beats at once (a predictor that swapped a model: readers learn of it within
    the moment, not at the next tick)."""
    log = logging.getLogger(__name__)
    while True:
        try:
            extra = details() if details is not None else None
            await board.heartbeat(service, consumer, ttl_s=int(interval * 3) + 1, details=extra)
        except Exception:
            log.warning("heartbeat failed", exc_info=True)
        if now is None:
            await asyncio.sleep(interval)
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(now.wait(), interval)
        now.clear()
