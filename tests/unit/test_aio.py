"""`every`: actions on a period while a body runs; at the end, one under way is let finish."""

from __future__ import annotations

import asyncio

import pytest

from shared import aio
from shared.aio import every

pytestmark = pytest.mark.anyio


async def test_actions_run_on_the_period_while_the_body_runs() -> None:
    calls: list[int] = []

    async def action() -> None:
        calls.append(len(calls))

    async with every(0.01, action, "counting"):
        while len(calls) < 3:
            await asyncio.sleep(0.005)
    after = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == after  # stopped with the body


async def test_an_action_under_way_when_the_body_ends_is_finished_not_cancelled() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[bool] = []

    async def action() -> None:
        started.set()
        await release.wait()  # a command between its send and its answer
        finished.append(True)

    async def body() -> None:
        async with every(0.001, action, "renewing"):
            await started.wait()

    ending = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    assert not ending.done()  # the end waits for the action
    release.set()
    await ending
    assert finished == [True]


async def test_an_action_that_hangs_is_cancelled_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aio, "FINISH_S", 0.05)
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def action() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async with every(0.001, action, "hanging"):
        await started.wait()
    assert cancelled == [True]


async def test_a_failing_action_is_tried_again() -> None:
    calls: list[int] = []

    async def action() -> None:
        calls.append(1)
        raise ConnectionError("redis away")

    async with every(0.005, action, "failing"):
        while len(calls) < 2:
            await asyncio.sleep(0.005)
    assert len(calls) >= 2
