"""A predictor replica: production models in memory, hot-reloaded on `model-promoted`.

Every replica reads every promotion (plain XREAD from the stream's end, no consumer group: a
group would hand each event to one replica only) and converges with the registry at start and
every `STREAMOPS_PREDICTOR_CONVERGE_S`, so a replica that was down or missed an event catches
up. Predict batches are answered by predictor.online; batch jobs by predictor's scoring.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio.to_thread
import redis.asyncio as aioredis
from faststream import FastStream
from faststream.redis import RedisStreamMessage, StreamSub
from faststream.specification import AsyncAPI

from predictor.cache import ModelCache
from predictor.drift import DriftMonitor
from predictor.metrics import PredictorMetrics
from predictor.online import OnlinePredictor
from predictor.scoring_app import wire_scoring
from predictor.service import Predictor
from shared.broker import build_broker, redis_client
from shared.datasets import served_specs
from shared.delivery import parse_event
from shared.errors import InvalidEvent, ModelLoadFailed
from shared.events import ModelLoaded, ModelPromoted, ModelTrained
from shared.metrics import MetricsEndpoint, broker_middleware
from shared.registry import Registry
from shared.settings import PredictorSettings
from shared.telemetry import RedisStatusBoard, StatusBoard, beat, configure_logging
from shared.wire import entry_body, entry_fields

SERVICE = "predictor"
Trigger = Literal["start", "promotion", "converge", "prefetch"]
log = logging.getLogger(__name__)


@dataclass
class Replica:
    settings: PredictorSettings
    cache: ModelCache
    board: StatusBoard
    registry: Registry | None = None
    client: aioredis.Redis | None = None
    metrics: PredictorMetrics = field(default_factory=PredictorMetrics)
    predictor: Predictor | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Load the production models before anything else: a replica is ready only then."""
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=self.settings.threads)  # for the process, from now on
        if self.registry is None:
            from shared.registry import MlflowRegistry

            self.registry = MlflowRegistry(self.settings.common.mlflow_tracking_uri)
        self.predictor = Predictor(
            self.registry,
            served_specs(self.settings.common.datasets_dir, self.settings.datasets or None),
            self.cache,
            drift=self.metrics.drift,
        )
        await self.converge("start")

    async def converge(self, trigger: Trigger = "converge") -> None:
        assert self.predictor is not None
        try:
            stale = await anyio.to_thread.run_sync(self.predictor.stale)
        except Exception as exc:  # registry down: serve what we have, try again later
            log.error("cannot read the registry to converge: %s", exc)
            return
        for name, version in stale:
            await self.load(name, version, trigger)

    async def on_promoted(self, msg: RedisStreamMessage) -> None:
        assert self.predictor is not None
        message_id = msg.raw_message.get("message_ids", [b""])[0]
        try:
            event = parse_event(
                ModelPromoted,
                entry_body(msg.raw_message["data"]),
                ModelPromoted.stream,
                str(message_id),
            )
        except InvalidEvent as exc:
            log.warning("ignoring a malformed model-promoted entry: %s", exc)
            return
        if self.predictor.wants(event):
            await self.load(event.model_name, event.version, "promotion")

    async def on_trained(self, msg: RedisStreamMessage) -> None:
        """A version just trained is a candidate: load it now, so its promotion is a swap."""
        assert self.predictor is not None
        try:
            event = parse_event(
                ModelTrained, entry_body(msg.raw_message["data"]), ModelTrained.stream, ""
            )
        except InvalidEvent as exc:
            log.warning("ignoring a malformed model-trained entry: %s", exc)
            return
        if event.model_name in self.predictor.specs:
            await self.load(event.model_name, event.model_version, "prefetch")

    async def load(self, name: str, version: int, trigger: Trigger) -> None:
        """Load `version` in a thread and swap it in (stage it, for a prefetch); say what
        happened on `model-loads` (a refused version keeps the old one serving)."""
        assert self.predictor is not None
        started = time.monotonic()
        reason = ""
        work = self.predictor.stage if trigger == "prefetch" else self.predictor.swap_in
        try:
            if await anyio.to_thread.run_sync(work, name, version) is None:
                return  # already staged or in service
        except ModelLoadFailed as exc:
            reason = str(exc)
            log.error("not loading %s v%d (%s): %s", name, version, trigger, exc)
        seconds = time.monotonic() - started
        self.metrics.loads.labels(name, trigger, "refused" if reason else "loaded").inc()
        if not reason:
            self.metrics.load_seconds.labels(name).observe(seconds)
        self._export_versions()
        await self._announce(
            ModelLoaded(
                replica=self.settings.common.consumer_name,
                model_name=name,
                version=version,
                serving=self.cache.version(name),
                loaded=not reason,
                reason=reason[:2000],
                seconds=round(seconds, 4),
                trigger=trigger,
            )
        )

    def _export_versions(self) -> None:
        for name in self.cache.names():
            version = self.cache.version(name)
            if version is not None:
                self.metrics.version.labels(name).set(version)

    async def _announce(self, event: ModelLoaded) -> None:
        if self.client is None:
            return
        try:
            await self.client.xadd(event.stream, entry_fields(event), maxlen=10_000)  # type: ignore[arg-type]
        except Exception:
            log.warning("could not publish %s", event.stream, exc_info=True)

    async def start_background(self, client: aioredis.Redis) -> None:
        """After the models are in and the subscribers read: answer predict batches, beat."""
        assert self.predictor is not None
        consumer = self.settings.common.consumer_name
        online = OnlinePredictor(
            client, self.predictor, consumer, self.settings.read_batches, metrics=self.metrics
        )
        self.tasks.append(asyncio.create_task(online.run()))
        self.tasks.append(
            asyncio.create_task(beat(self.board, SERVICE, consumer, details=self.serving))
        )
        self.tasks.append(asyncio.create_task(self._converge_forever()))

    def serving(self) -> dict[str, Any]:
        """What the heartbeat tells the gateway: the version of each model in service."""
        models = {name: self.cache.version(name) for name in self.cache.names()}
        return {"models": models}

    async def _converge_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.converge_s)
            await self.converge()

    async def stop_background(self) -> None:
        for task in self.tasks:
            task.cancel()


def build_app(
    settings: PredictorSettings | None = None,
    cache: ModelCache | None = None,
    registry: Registry | None = None,
    metrics: PredictorMetrics | None = None,
) -> FastStream:
    """The replica; `cache`, `registry` and `metrics` can be given to look inside or fake the
    registry."""
    settings = settings or PredictorSettings()
    common = settings.common
    configure_logging(common.log_level)
    metrics = metrics or PredictorMetrics(
        drift=DriftMonitor(settings.drift_window, settings.drift_min_rows)
    )
    broker = build_broker(common, [broker_middleware(metrics.registry, SERVICE)])
    client = redis_client(common)
    replica = Replica(
        settings, cache or ModelCache(), RedisStatusBoard(client), registry, client, metrics
    )
    promotions = StreamSub(ModelPromoted.stream, last_id="$")

    @broker.subscriber(stream=promotions, description=ModelPromoted.__doc__)
    async def on_promoted(msg: RedisStreamMessage) -> None:
        await replica.on_promoted(msg)

    # Fan-out too: every replica prefetches every new version of the models it serves.
    trained = StreamSub(ModelTrained.stream, last_id="$")

    @broker.subscriber(stream=trained, description=ModelTrained.__doc__)
    async def on_trained(msg: RedisStreamMessage) -> None:
        await replica.on_trained(msg)

    # Batch scoring (score-requested and its chunks): wired here.
    create_scoring_groups = wire_scoring(broker, replica, client, settings)

    endpoint = MetricsEndpoint(metrics.registry, common.metrics_port)

    async def close() -> None:
        await endpoint.stop()
        await client.aclose()

    return FastStream(
        broker,
        specification=AsyncAPI(
            broker,
            title="streamops predictor",
            description="Serves production models, hot-reloaded.",
        ),
        on_startup=[endpoint.start, create_scoring_groups, replica.start],
        after_startup=[functools.partial(replica.start_background, client)],
        on_shutdown=[replica.stop_background],
        after_shutdown=[close],
    )
