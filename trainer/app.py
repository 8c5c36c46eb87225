"""The trainer service: `data-ingested` (group `trainer`) → MLflow → `model-trained`,
`model-promoted`; and alias moves made outside streamops → `model-promoted`."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import redis.asyncio as aioredis
from faststream import FastStream
from faststream.specification import AsyncAPI

from shared.aio import every
from shared.broker import build_broker, ensure_group, redis_client
from shared.delivery import Delivery, Ledger, RedisLedger, subscribe
from shared.events import DataIngested, ModelPromoted, ModelTrained
from shared.feature_store import FeatureStore
from shared.metrics import MetricsEndpoint, broker_middleware
from shared.settings import TrainerSettings
from shared.telemetry import RedisStatusBoard, StatusBoard, beat, configure_logging
from trainer import worker
from trainer.metrics import TrainerMetrics
from trainer.service import plan_for

GROUP = "trainer"
log = logging.getLogger(__name__)


@dataclass
class Trainer:
    """The service's parts; `build_app` wires them to a broker."""

    settings: TrainerSettings
    client: aioredis.Redis
    store: FeatureStore
    board: StatusBoard
    trained_out: Any
    promoted_out: Any
    metrics: TrainerMetrics = field(default_factory=TrainerMetrics)
    pool: ProcessPoolExecutor | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def on_data_ingested(self, event: DataIngested) -> None:
        common = self.settings.common
        plan = await anyio.to_thread.run_sync(plan_for, event, common.datasets_dir, self.store)
        if plan is None:
            log.info("dataset %s has no training section: nothing to train", event.dataset)
            self.metrics.trainings.labels(event.dataset, "nothing_to_train").inc()
            return
        lock = f"streamops:training:{plan.key}"
        # Another trainer already fits this exact state: its own message stays pending until it
        # is done (and is reclaimed if it dies), so this event is covered.
        if not await self.client.set(lock, common.consumer_name, nx=True, px=common.lease_ms):
            log.info("%s is being trained elsewhere: coalesced", plan.key)
            self.metrics.trainings.labels(event.dataset, "coalesced").inc()
            return
        assert self.pool is not None, "start() creates the worker pool"
        started = time.monotonic()
        try:
            async with every(
                common.lease_ms / 3000,
                lambda: self.client.pexpire(lock, common.lease_ms),
                f"renewing {lock}",
            ):
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(
                    self.pool, worker.train_in_worker, event.model_dump_json(), plan
                )
        except BrokenProcessPool:
            # A worker died (out of memory, killed): the pool is unusable from now on. Start a
            # fresh one; this message is retried once its lease runs out.
            log.error("a training worker died; starting new workers")
            self.metrics.trainings.labels(event.dataset, "worker_died").inc()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
            raise
        finally:
            await self.client.delete(lock)
        if result is None:
            self.metrics.trainings.labels(event.dataset, "nothing_to_train").inc()
            return
        trained, promoted = worker.decode(result)
        self.metrics.trained(trained, time.monotonic() - started)
        await self.trained_out.publish(trained)
        if promoted is not None:
            self.metrics.promoted(promoted)
            await self.promoted_out.publish(promoted)

    async def watch(self) -> None:
        """Publish alias moves made outside streamops (see trainer/watcher.py)."""
        from shared.registry import MlflowRegistry
        from trainer.watcher import external_moves

        registry = MlflowRegistry(self.settings.common.mlflow_tracking_uri)
        suspects: dict[str, int] = {}
        while True:
            await asyncio.sleep(self.settings.watch_s)
            try:
                moves = await anyio.to_thread.run_sync(external_moves, registry, suspects)
            except Exception:  # the registry being away is no reason to stop watching
                log.warning("watching the registry failed", exc_info=True)
                continue
            for move in moves:
                log.info(
                    "production of %s moved outside streamops: v%s -> v%d",
                    move.model_name,
                    move.previous_version,
                    move.version,
                )
                self.metrics.promoted(move)
                await self.promoted_out.publish(move)

    async def start(self) -> None:
        await ensure_group(self.client, DataIngested.stream, GROUP)
        self.pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        common = self.settings.common
        return worker.pool(
            self.settings.workers,
            common.mlflow_tracking_uri,
            common.feature_store_root,
            common.datasets_dir,
            common.log_level,
        )

    async def start_background(self) -> None:
        self.tasks.append(
            asyncio.create_task(beat(self.board, GROUP, self.settings.common.consumer_name))
        )
        if self.settings.watch_s > 0:
            self.tasks.append(asyncio.create_task(self.watch()))

    async def stop_background(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        await self.client.aclose()


def build_app(
    settings: TrainerSettings | None = None,
    ledger: Ledger | None = None,
    board: StatusBoard | None = None,
    metrics: TrainerMetrics | None = None,
) -> FastStream:
    settings = settings or TrainerSettings()
    common = settings.common
    configure_logging(common.log_level)
    metrics = metrics or TrainerMetrics()
    broker = build_broker(common, [broker_middleware(metrics.registry, GROUP)])
    client = redis_client(common)
    trainer = Trainer(
        settings=settings,
        client=client,
        store=FeatureStore(common.feature_store_root),
        board=board or RedisStatusBoard(client),
        trained_out=broker.publisher(
            stream=ModelTrained.stream, schema=ModelTrained, description=ModelTrained.__doc__
        ),
        promoted_out=broker.publisher(
            stream=ModelPromoted.stream, schema=ModelPromoted, description=ModelPromoted.__doc__
        ),
        metrics=metrics,
    )
    ledger = ledger or RedisLedger(
        client, DataIngested.stream, GROUP, common.consumer_name, common.done_ttl_s
    )
    delivery = Delivery(ledger, DataIngested.stream, GROUP, common.consumer_name, common)
    subscribe(broker, delivery, DataIngested, trainer.on_data_ingested)
    endpoint = MetricsEndpoint(metrics.registry, common.metrics_port)
    return FastStream(
        broker,
        specification=AsyncAPI(
            broker,
            title="streamops trainer",
            description="Trains, registers, judges and promotes models of ingested datasets.",
        ),
        on_startup=[endpoint.start, trainer.start],
        after_startup=[trainer.start_background],
        on_shutdown=[trainer.stop_background],
        after_shutdown=[trainer.close, endpoint.stop],
    )
