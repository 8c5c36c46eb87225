"""What the gateway knows about the predictor replicas: their heartbeats.

Each replica's heartbeat (`streamops:heartbeat:predictor:<consumer>`) carries the version of
each model it serves. The gateway reads them every second, so a predict request with no
replica alive is answered 503 at once instead of waiting for its timeout, and `/readyz` says
whether anything can answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from shared.telemetry import heartbeat_key

log = logging.getLogger(__name__)


@dataclass
class Fleet:
    client: aioredis.Redis
    interval: float = 1.0
    replicas: dict[str, dict[str, int]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def alive(self) -> bool:
        return bool(self.replicas)

    def serving(self, model_name: str) -> dict[str, int]:
        """Replica → version of `model_name` it serves."""
        return {
            replica: models[model_name]
            for replica, models in self.replicas.items()
            if models.get(model_name) is not None
        }

    async def refresh(self) -> None:
        prefix = heartbeat_key("predictor", "")
        keys = [key async for key in self.client.scan_iter(match=f"{prefix}*", count=200)]
        values = await self.client.mget(keys) if keys else []
        replicas: dict[str, dict[str, int]] = {}
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue
            try:
                models = json.loads(value).get("models") or {}
            except (ValueError, AttributeError):
                models = {}
            replicas[key.decode()[len(prefix) :]] = {
                name: int(version) for name, version in models.items() if version is not None
            }
        self.replicas = replicas

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:
                log.warning("reading predictor heartbeats failed", exc_info=True)
