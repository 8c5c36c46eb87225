"""The ack waits for replicas: when they do not confirm, the work is done again in place, not
by a redelivery that would use up the message's deliveries (shared.delivery)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from faststream.redis import TestRedisBroker

from shared.broker import build_broker
from shared.delivery import Delivery, subscribe
from shared.errors import ReplicationLagging
from shared.events import DataArrived
from shared.settings import CommonSettings
from tests.service.fakes import FakeLedger, NoPendingEntries

pytestmark = pytest.mark.anyio


@dataclass
class LaggingFence:
    """Replicas that fail to confirm `lags` times, then do."""

    lags: int
    calls: int = 0

    async def settle(self) -> None:
        self.calls += 1
        if self.calls <= self.lags:
            raise ReplicationLagging("0 of 1 replicas of 127.0.0.1:7000 confirmed within 10 ms")


async def _deliver(fence: LaggingFence) -> tuple[FakeLedger, list[DataArrived]]:
    common = CommonSettings(redis_url="redis://127.0.0.1:1/0", max_deliveries=1)
    broker = build_broker(common)
    ledger = FakeLedger()
    done: list[DataArrived] = []

    async def work(event: DataArrived) -> None:
        done.append(event)

    delivery = Delivery(ledger, "jobs", "g", "c", common, replication=fence)
    subscribe(broker, delivery, DataArrived, work)
    async with TestRedisBroker(broker, pel=NoPendingEntries()) as test_broker:
        await test_broker.publish(DataArrived(dataset="churn", source="x.csv"), stream="jobs")
    return ledger, done


async def test_replicas_that_lag_get_the_work_again_then_the_ack() -> None:
    fence = LaggingFence(lags=2)
    ledger, done = await _deliver(fence)
    assert len(done) == 3  # twice again: what the lost master held is written again
    assert fence.calls == 3
    assert len(ledger.acked) == 1
    # One delivery allowed, and none used up: nothing failed, nothing dead-lettered.
    assert ledger.errors == {}
    assert ledger.letters == []


async def test_replicas_that_confirm_at_once_cost_one_settle() -> None:
    fence = LaggingFence(lags=0)
    ledger, done = await _deliver(fence)
    assert (len(done), fence.calls, len(ledger.acked)) == (1, 1, 1)
