"""Small asyncio helpers shared by the services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def every(
    seconds: float, action: Callable[[], Awaitable[object]], what: str
) -> AsyncIterator[None]:
    """Run `action` every `seconds` while the body runs (lease renewals, progress reports). A
    failing action is logged and tried again next time: one miss is not worth failing for."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await action()
            except Exception:
                log.warning("%s failed", what, exc_info=True)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
