"""Poll for a condition with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what or condition}")
        time.sleep(interval)


async def eventually(
    condition: Callable[[], Awaitable[T]],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "",
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what or condition}")
        await asyncio.sleep(interval)
