"""The trainer service: `data-ingested` (group `trainer`) → MLflow → `model-trained`,
`model-promoted`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor

import anyio.to_thread
import redis.asyncio as aioredis
from faststream import FastStream
from faststream.specification import AsyncAPI

from ingestor.store import FeatureStore
from shared.broker import build_broker, ensure_group, redis_client
from shared.delivery import Delivery, Ledger, RedisLedger, subscribe
from shared.events import DataIngested, ModelPromoted, ModelTrained
from shared.settings import TrainerSettings
from shared.telemetry import RedisStatusBoard, StatusBoard, beat, configure_logging
from trainer import worker
from trainer.service import plan_for

GROUP = "trainer"
log = logging.getLogger(__name__)


def build_app(
    settings: TrainerSettings | None = None,
    ledger: Ledger | None = None,
    board: StatusBoard | None = None,
) -> FastStream:
    settings = settings or TrainerSettings()
    common = settings.common
    configure_logging(common.log_level)
    broker = build_broker(common)
    client = redis_client(common)
    store = FeatureStore(common.feature_store_root)
    ledger = ledger or RedisLedger(
        client, DataIngested.stream, GROUP, common.consumer_name, common.done_ttl_s
    )
    board = board or RedisStatusBoard(client)
    delivery = Delivery(ledger, DataIngested.stream, GROUP, common.consumer_name, common)
    trained_out = broker.publisher(
        stream=ModelTrained.stream, schema=ModelTrained, description=ModelTrained.__doc__
    )
    promoted_out = broker.publisher(
        stream=ModelPromoted.stream, schema=ModelPromoted, description=ModelPromoted.__doc__
    )
    workers: list[ProcessPoolExecutor] = []

    async def on_data_ingested(event: DataIngested) -> None:
        plan = await anyio.to_thread.run_sync(plan_for, event, common.datasets_dir, store)
        if plan is None:
            log.info("dataset %s has no training section: nothing to train", event.dataset)
            return
        lock = f"streamops:training:{plan.key}"
        # Another trainer already fits this exact state: its own message stays pending until it
        # is done (and is reclaimed if it dies), so this event is covered.
        if not await client.set(lock, common.consumer_name, nx=True, px=common.lease_ms):
            log.info("%s is being trained elsewhere: coalesced", plan.key)
            return
        try:
            async with _renewing(client, lock, common.lease_ms):
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(
                    workers[0], worker.train_in_worker, event.model_dump_json()
                )
        finally:
            await client.delete(lock)
        if result is None:
            return
        trained, promoted = worker.decode(result)
        await trained_out.publish(trained)
        if promoted is not None:
            await promoted_out.publish(promoted)

    subscribe(broker, delivery, DataIngested, on_data_ingested)
    app = FastStream(
        broker,
        specification=AsyncAPI(
            broker,
            title="streamops trainer",
            description="Trains, registers, judges and promotes models of ingested datasets.",
        ),
    )
    heartbeat: list[asyncio.Task[None]] = []

    @app.on_startup
    async def start() -> None:
        await ensure_group(client, DataIngested.stream, GROUP)
        workers.append(
            worker.pool(
                settings.workers,
                common.mlflow_tracking_uri,
                common.feature_store_root,
                common.datasets_dir,
                common.log_level,
            )
        )

    @app.after_startup
    async def start_heartbeat() -> None:
        heartbeat.append(asyncio.create_task(beat(board, GROUP, common.consumer_name)))

    @app.on_shutdown
    async def stop() -> None:
        for task in heartbeat:
            task.cancel()

    @app.after_shutdown
    async def close() -> None:
        for pool in workers:
            pool.shutdown(cancel_futures=True)
        await client.aclose()

    return app


@contextlib.asynccontextmanager
async def _renewing(client: aioredis.Redis, key: str, lease_ms: int) -> AsyncIterator[None]:
    """Keep a lock key alive while a fit runs."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease_ms / 3000)
            await client.pexpire(key, lease_ms)

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
