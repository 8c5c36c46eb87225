"""The trainer service: `data-ingested` (group `trainer`) → MLflow → `model-trained`,
`model-promoted`; and alias moves made outside streamops → `model-promoted`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import redis.asyncio as aioredis
from faststream import FastStream
from faststream.specification import AsyncAPI

from shared.broker import build_broker, ensure_group, redis_client
from shared.datasets import load_spec
from shared.delivery import Delivery, Ledger, RedisLedger, subscribe
from shared.events import (
    DataArrived,
    DataIngested,
    ModelPromoted,
    ModelTrained,
    RetrainRequested,
    describe_source,
)
from shared.feature_store import FeatureStore
from shared.metrics import MetricsEndpoint, broker_middleware
from shared.replication import Replication
from shared.settings import TrainerSettings
from shared.telemetry import RedisStatusBoard, StatusBoard, beat, configure_logging
from trainer.metrics import TrainerMetrics
from trainer.pool import Fits, WorkerPool
from trainer.service import Plan, log_arrival, plan_for, retrain_plan
from trainer.slots import NOTHING_TO_TRAIN, Locks, RedisLocks, TrainingSlots

GROUP = "trainer"
log = logging.getLogger(__name__)


@dataclass
class Trainer:
    """The service's parts; `build_app` wires them to a broker."""

    settings: TrainerSettings
    client: aioredis.Redis
    store: FeatureStore
    board: StatusBoard
    slots: TrainingSlots
    trained_out: Any
    promoted_out: Any
    metrics: TrainerMetrics
    retrain_out: Any = None  # where the retrain watcher publishes
    arrived_out: Any = None  # data-arrived: a retrain on the prediction log asks for its data
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def on_data_ingested(self, event: DataIngested) -> None:
        datasets_dir = self.settings.common.datasets_dir
        plan = await anyio.to_thread.run_sync(plan_for, event, datasets_dir, self.store)
        if plan is None:
            log.info("dataset %s has no training section: nothing to train", event.dataset)
            self.metrics.trainings.labels(event.dataset, NOTHING_TO_TRAIN).inc()
            return
        await self._train(event, plan)

    async def on_retrain_requested(self, event: RetrainRequested) -> None:
        """Retrain on the dataset's newest version, then gate and promote as usual; or, when the
        spec retrains on its prediction log, ask the ingestor for that version first (its
        `data-ingested` then trains as any new version does)."""
        datasets_dir = self.settings.common.datasets_dir
        spec = await anyio.to_thread.run_sync(load_spec, datasets_dir, event.dataset)
        rule = spec.training.retrain if spec.training is not None else None
        if rule is not None and rule.data == "prediction_log":
            arrival = await anyio.to_thread.run_sync(log_arrival, event, spec, self.store)
            log.info("retrain of %s (%s) asks for its labelled log: %s", event.model_name,
                     event.reason, describe_source(arrival.source))  # fmt: skip
            await self.arrived_out.publish(arrival)
            return
        planned = await anyio.to_thread.run_sync(retrain_plan, event, datasets_dir, self.store)
        if planned is None:
            log.warning("retrain of %s requested, but %s has nothing to train on",
                        event.model_name, event.dataset)  # fmt: skip
            self.metrics.trainings.labels(event.dataset, NOTHING_TO_TRAIN).inc()
            return
        ingested, plan = planned
        log.info("retraining %s on %s v%d (%s)", plan.model_name, plan.dataset, plan.version,
                 event.reason)  # fmt: skip
        await self._train(ingested, plan)

    async def _train(self, event: DataIngested, plan: Plan) -> None:
        training = await self.slots.train(event, plan)
        if training.trained is None:
            self.metrics.trainings.labels(event.dataset, training.outcome).inc()
            return
        self.metrics.trained(training.trained, training.seconds)
        await self.trained_out.publish(training.trained)
        if training.promoted is not None:
            self.metrics.promoted(training.promoted)
            await self.promoted_out.publish(training.promoted)

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
        await ensure_group(self.client, RetrainRequested.stream, GROUP)
        self.slots.fits.start()

    async def start_background(self) -> None:
        self.tasks.append(
            asyncio.create_task(beat(self.board, GROUP, self.settings.common.consumer_name))
        )
        if self.settings.watch_s > 0:
            self.tasks.append(asyncio.create_task(self.watch()))
        if self.settings.retrain_check_s > 0 and self.retrain_out is not None:
            self.tasks.append(asyncio.create_task(self._retrain_watcher().run()))
        if self.settings.guard_s > 0:
            self.tasks.append(asyncio.create_task(self._guard().run()))

    def _guard(self) -> Any:
        """The rollout guard (trainer/guarding.py), on the real registry."""
        from shared.registry import MlflowRegistry
        from trainer.guarding import Guard

        common = self.settings.common
        return Guard(
            self.client,
            MlflowRegistry(common.mlflow_tracking_uri),
            common.datasets_dir,
            common.feature_store_root,
            self.promoted_out.publish,
            self.metrics,
            interval_s=self.settings.guard_s,
        )

    def _retrain_watcher(self) -> Any:
        """The retrain rules' watcher (trainer/retrain.py), on the real registry."""
        from shared.registry import MlflowRegistry
        from trainer.retrain import RetrainWatcher

        common = self.settings.common
        return RetrainWatcher(
            self.client,
            MlflowRegistry(common.mlflow_tracking_uri),
            common.datasets_dir,
            common.feature_store_root,
            self.retrain_out.publish,
            interval_s=self.settings.retrain_check_s,
            metrics=self.metrics,
        )

    async def stop_background(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def close(self) -> None:
        self.slots.fits.close()
        await self.client.aclose()


def build_app(
    settings: TrainerSettings | None = None,
    ledger: Ledger | None = None,
    board: StatusBoard | None = None,
    metrics: TrainerMetrics | None = None,
    *,
    fits: Fits | None = None,
    locks: Locks | None = None,
) -> FastStream:
    """The service; `ledger`, `board`, `fits` and `locks` replace their real versions in handler
    tests."""
    settings = settings or TrainerSettings()
    common = settings.common
    configure_logging(common.log_level)
    metrics = metrics or TrainerMetrics()
    broker = build_broker(common, [broker_middleware(metrics.registry, GROUP)])
    client = redis_client(common)
    slots = TrainingSlots(
        locks=locks or RedisLocks(client),
        fits=fits or WorkerPool(settings),
        owner=common.consumer_name,
        lease_ms=common.lease_ms,
        metrics=metrics,
    )
    trainer = Trainer(
        settings=settings,
        client=client,
        store=FeatureStore(common.feature_store_location),
        board=board or RedisStatusBoard(client),
        slots=slots,
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
    replication = Replication(client, common.redis_wait_replicas, common.redis_wait_ms)
    delivery = Delivery(
        ledger, DataIngested.stream, GROUP, common.consumer_name, common, replication
    )
    subscribe(broker, delivery, DataIngested, trainer.on_data_ingested)
    retrains = RedisLedger(
        client, RetrainRequested.stream, GROUP, common.consumer_name, common.done_ttl_s
    )
    delivery = Delivery(
        retrains, RetrainRequested.stream, GROUP, common.consumer_name, common, replication
    )
    subscribe(broker, delivery, RetrainRequested, trainer.on_retrain_requested)
    requests = broker.publisher(
        stream=RetrainRequested.stream,
        schema=RetrainRequested,
        description=RetrainRequested.__doc__,
    )
    trainer.retrain_out = requests
    trainer.arrived_out = broker.publisher(
        stream=DataArrived.stream, schema=DataArrived, description=DataArrived.__doc__
    )
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
