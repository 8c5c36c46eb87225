"""Where fits run: a port, and its implementation on worker processes (trainer/worker.py)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ProcessPoolExecutor
from typing import Protocol

from shared.events import DataIngested
from shared.settings import TrainerSettings
from trainer import worker
from trainer.service import Outcome, Plan


class Fits(Protocol):
    """Runs planned fits; worker processes in the service, a canned answer in tests."""

    async def fit(self, event: DataIngested, plan: Plan) -> Outcome | None:
        """Train exactly `plan` (None: nothing to train). Raises BrokenProcessPool when a worker
        died; then nothing runs until `replace`."""

    def start(self) -> None:
        """Start the workers, on the service's startup."""

    def replace(self) -> None:
        """Start fresh workers instead of the broken ones."""

    def close(self) -> None: ...


class WorkerPool:
    """Fits in spawned worker processes, which die with the service."""

    def __init__(self, settings: TrainerSettings) -> None:
        self._settings = settings
        self._executor: ProcessPoolExecutor | None = None

    async def fit(self, event: DataIngested, plan: Plan) -> Outcome | None:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self._workers(), worker.train_in_worker, event.model_dump_json(), plan
        )
        if result is None:
            return None
        return Outcome(*worker.decode(result))

    def start(self) -> None:
        self._workers()

    def replace(self) -> None:
        # A pool with a dead worker is unusable from then on; its other fits are lost too.
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self._workers()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)

    def _workers(self) -> ProcessPoolExecutor:
        # Made on start, not when the app is built: building an app starts no processes.
        if self._executor is None:
            self._executor = worker.pool(self._settings)
        return self._executor
