"""The ingestor service: `data-arrived` (group `ingestor`) → feature store → `data-ingested`."""

from __future__ import annotations

import asyncio
import functools
import time

import anyio.to_thread
from faststream import FastStream
from faststream.specification import AsyncAPI

from ingestor.labels import LabelJoiner
from ingestor.merging import LogMerger
from ingestor.metrics import IngestorMetrics
from ingestor.predlog import PredictionLogger
from ingestor.quality import LiveQuality
from ingestor.service import ingest
from shared.broker import build_broker, ensure_group, redis_client
from shared.datasets import load_spec
from shared.delivery import Delivery, Ledger, RedisLedger, subscribe
from shared.events import DataArrived, DataIngested, DataRejected, LabelsArrived
from shared.feature_store import FeatureStore
from shared.labels import label_events
from shared.metrics import MetricsEndpoint, broker_middleware
from shared.replication import Replication
from shared.settings import IngestorSettings
from shared.telemetry import (
    ProgressRelay,
    RedisStatusBoard,
    StatusBoard,
    beat,
    configure_logging,
)

GROUP = "ingestor"


def build_app(
    settings: IngestorSettings | None = None,
    ledger: Ledger | None = None,
    board: StatusBoard | None = None,
    metrics: IngestorMetrics | None = None,
) -> FastStream:
    """The service; `ledger` and `board` replace their Redis versions in handler tests."""
    settings = settings or IngestorSettings()
    common = settings.common
    configure_logging(common.log_level)
    metrics = metrics or IngestorMetrics()
    broker = build_broker(common, [broker_middleware(metrics.registry, GROUP)])
    client = redis_client(common)
    store = FeatureStore(common.feature_store_location)
    ledger = ledger or RedisLedger(
        client, DataArrived.stream, GROUP, common.consumer_name, common.done_ttl_s
    )
    board = board or RedisStatusBoard(client)
    replication = Replication(client, common.redis_wait_replicas, common.redis_wait_ms)
    delivery = Delivery(
        ledger, DataArrived.stream, GROUP, common.consumer_name, common, replication
    )
    ingested = broker.publisher(
        stream=DataIngested.stream, schema=DataIngested, description=DataIngested.__doc__
    )
    rejected = broker.publisher(
        stream=DataRejected.stream, schema=DataRejected, description=DataRejected.__doc__
    )
    labelled = broker.publisher(
        stream=LabelsArrived.stream, schema=LabelsArrived, description=LabelsArrived.__doc__
    )

    async def on_data_arrived(event: DataArrived) -> None:
        # Reading and validating is CPU and disk work: off the event loop, so leases keep
        # being renewed and other messages keep flowing.
        # Progress goes to the status board, where `streamops ingest` shows it as a bar.
        started = time.monotonic()
        async with ProgressRelay(board, event.correlation_id).running() as relay:
            result = await anyio.to_thread.run_sync(
                functools.partial(ingest, event, settings, store, relay.report)
            )
        metrics.record(result, time.monotonic() - started)
        publisher = ingested if isinstance(result, DataIngested) else rejected
        await publisher.publish(result)
        if isinstance(result, DataIngested) and result.new_version:
            # A labels dataset's new rows are ground truth for a model: published as labels,
            # before the ack (a redelivery publishes copies, with the same event ids).
            for labels in await anyio.to_thread.run_sync(labels_of, result):
                await labelled.publish(labels)

    def labels_of(result: DataIngested) -> list[LabelsArrived]:
        spec = load_spec(common.datasets_dir, result.dataset)
        if spec.labels is None:
            return []
        table = store.read(result.dataset, result.version)
        return label_events(spec, table, result.version, result.correlation_id)

    subscribe(broker, delivery, DataArrived, on_data_arrived)

    app = FastStream(
        broker,
        specification=AsyncAPI(
            broker,
            title="streamops ingestor",
            description="Validates arriving data and stores it as feature-store versions.",
        ),
    )

    heartbeat: list[asyncio.Task[None]] = []
    logger = (
        PredictionLogger(
            client,
            common.feature_store_root,
            common.consumer_name,
            flush_entries=settings.log_flush_entries,
            flush_s=settings.log_flush_s,
            lease_ms=common.lease_ms,
            keep_days=settings.log_retention_days,
            metrics=metrics.log,
        )
        if settings.log_compaction
        else None
    )
    merger = (
        LogMerger(common.feature_store_root, settings.log_merge_s)
        if settings.log_compaction and settings.log_merge_s > 0
        else None
    )
    joiner = (
        LabelJoiner(
            client,
            common.feature_store_root,
            common.consumer_name,
            grace_s=settings.label_grace_s,
            lease_ms=common.lease_ms,
            metrics=metrics.labels,
        )
        if settings.label_join
        else None
    )
    quality = (
        LiveQuality(
            common.feature_store_root,
            common.datasets_dir,
            metrics.quality,
            window_rows=settings.quality_window_rows,
            window_s=settings.quality_window_s,
            interval_s=settings.quality_interval_s,
        )
        if settings.label_join
        else None
    )

    endpoint = MetricsEndpoint(metrics.registry, common.metrics_port)

    @app.on_startup
    async def create_groups() -> None:
        await endpoint.start()
        await anyio.to_thread.run_sync(store.check)  # an object store must honour If-None-Match
        await ensure_group(client, DataArrived.stream, GROUP)

    @app.after_startup
    async def start_heartbeat() -> None:
        # After the broker started: a heartbeat means the subscribers are reading.
        heartbeat.append(asyncio.create_task(beat(board, GROUP, common.consumer_name)))
        for loop in (logger, merger, joiner, quality):
            if loop is not None:
                heartbeat.append(asyncio.create_task(loop.run()))

    @app.on_shutdown
    async def stop_heartbeat() -> None:
        for task in heartbeat:
            task.cancel()

    @app.after_shutdown
    async def close_client() -> None:
        await endpoint.stop()
        await client.aclose()

    return app
