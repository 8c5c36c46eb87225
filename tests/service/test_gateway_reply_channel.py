"""The gateway's reply channel after a failure: it subscribes again, and while the new
subscription fails it waits between attempts instead of holding the event loop (a
subscription that failed makes `listen()` end at once)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.coalesce import Coalescer
from shared.settings import CommonSettings, GatewaySettings
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


@dataclass
class Channel:
    """Pub/Sub as the coalescer uses it: the first subscription's connection drops, the next
    `failing` subscriptions fail, and later ones hold."""

    failing: int
    subscriptions: list[bool] = field(default_factory=list)  # True: it held

    def pubsub(self, **_: Any) -> FakePubSub:
        return FakePubSub(self)


@dataclass
class FakePubSub:
    channel: Channel
    subscribed: bool = False

    async def subscribe(self, name: str) -> None:
        attempt = len(self.channel.subscriptions)
        held = attempt == 0 or attempt > self.channel.failing
        self.channel.subscriptions.append(held)
        if not held:
            raise ConnectionError("Connection refused")
        self.subscribed = True

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        if not self.subscribed:
            return
        if len(self.channel.subscriptions) == 1:
            raise ConnectionError("Connection reset by peer")
        await asyncio.Event().wait()  # holds: nothing more to say
        yield {}

    async def aclose(self) -> None:
        self.subscribed = False


@pytest.mark.timeout(20)
async def test_failed_resubscriptions_wait_and_the_last_one_holds(tmp_path: Path) -> None:
    channel = Channel(failing=3)
    settings = GatewaySettings(common=CommonSettings(), inbox=tmp_path / "inbox")
    coalescer = Coalescer(channel, settings)  # type: ignore[arg-type]
    await coalescer.start()
    try:

        async def held() -> bool:
            return channel.subscriptions[-1:] == [True] and len(channel.subscriptions) > 1

        # eventually() sleeps between looks: it gets a turn only if the listener yields.
        await eventually(held, timeout=10, what="a subscription that holds again")
        assert channel.subscriptions == [True, False, False, False, True]
    finally:
        await coalescer.stop()
