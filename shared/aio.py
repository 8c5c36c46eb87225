"""Small asyncio helpers shared by the services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

log = logging.getLogger(__name__)


# How long the end of `every` waits for an action under way before cancelling it.
FINISH_S = 5.0


@contextlib.asynccontextmanager
async def every(
    seconds: float, action: Callable[[], Awaitable[object]], what: str
) -> AsyncIterator[None]:
    """Run `action` every `seconds` while the body runs (lease renewals, progress reports). A
    failing action is logged and tried again next time: one miss is not worth failing for.

    When the body ends, an action under way is let finish (up to FINISH_S), not cancelled: a
    Redis command cancelled between sending and reading can leave its answer on a pooled
    connection, where the next command reads it as its own and then waits for ever. A CI run
    had an ack's MULTI wait 2 minutes for its answer just after a lock renewal was cancelled.
    """
    stop = asyncio.Event()

    async def loop() -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
                return
            try:
                await action()
            except Exception:
                log.warning("%s failed", what, exc_info=True)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=FINISH_S)
        if not done:
            log.warning("%s did not finish in %.0f s: cancelled", what, FINISH_S)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
