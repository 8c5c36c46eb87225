"""One fit per dataset state across every trainer: a lock per training key, a lease on it.

The lock is `streamops:training:<key>`, taken with SET NX PX and renewed every third of its TTL
while the fit runs. A second trainer handling an event for the same state acks it as covered
("coalesced"): the first trainer's message stays pending until it is done, and is reclaimed
if it dies.

The lock's TTL is half the message lease. A dead trainer's message can be reclaimed a lease
after its last renewal, which is at most a third of a lease before it died; its lock is gone
half a lease after the death. So the reclaiming trainer always finds the lock free. With equal
clocks, a reclaim could beat the lock's expiry by milliseconds and coalesce the message into a
fit that no live trainer was running: acked, and never trained.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from shared.aio import every
from shared.events import DataIngested, ModelPromoted, ModelTrained
from trainer.metrics import TrainerMetrics
from trainer.pool import Fits
from trainer.service import Plan

log = logging.getLogger(__name__)

TRAINED = "trained"
NOTHING_TO_TRAIN = "nothing_to_train"
COALESCED = "coalesced"
WORKER_DIED = "worker_died"


class Locks(Protocol):
    """Expiring locks shared by every trainer (Redis in the service, a fake in tests)."""

    async def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take `key` unless someone holds it; it expires after `ttl_ms` unless renewed."""

    async def renew(self, key: str, ttl_ms: int) -> None: ...

    async def release(self, key: str) -> None: ...


@dataclass(frozen=True)
class RedisLocks:
    client: aioredis.Redis

    async def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self.client.set(key, owner, nx=True, px=ttl_ms))

    async def renew(self, key: str, ttl_ms: int) -> None:
        await self.client.pexpire(key, ttl_ms)

    async def release(self, key: str) -> None:
        await self.client.delete(key)


@dataclass(frozen=True)
class Training:
    """What a slot gave: the outcome (a metrics label) and the events to publish."""

    outcome: str
    trained: ModelTrained | None = None
    promoted: ModelPromoted | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class TrainingSlots:
    locks: Locks
    fits: Fits
    owner: str
    lease_ms: int
    metrics: TrainerMetrics

    async def train(self, event: DataIngested, plan: Plan) -> Training:
        """Fit `plan` under its lock, or say it is coalesced when another trainer holds it.

        A dead worker is counted, its pool replaced, and BrokenProcessPool raised again: the
        message stays pending and is retried once its lease runs out.
        """
        lock = f"streamops:training:{plan.key}"
        ttl_ms = self.lease_ms // 2
        if not await self.locks.acquire(lock, self.owner, ttl_ms):
            log.info("%s is being trained elsewhere: coalesced", plan.key)
            return Training(COALESCED)
        started = time.monotonic()
        try:
            async with every(
                ttl_ms / 3000,
                lambda: self.locks.renew(lock, ttl_ms),
                f"renewing {lock}",
            ):
                outcome = await self.fits.fit(event, plan)
        except BrokenProcessPool:
            log.error("a training worker died; starting new workers")
            # Counted here: the handler sees only the exception, which fails the message.
            self.metrics.trainings.labels(event.dataset, WORKER_DIED).inc()
            self.fits.replace()
            raise
        finally:
            await self.locks.release(lock)
        if outcome is None:
            return Training(NOTHING_TO_TRAIN)
        seconds = time.monotonic() - started
        return Training(TRAINED, outcome.trained, outcome.promoted, seconds)
