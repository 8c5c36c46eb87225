"""A predictor replica: production models in memory, hot-reloaded on `model-promoted`.

Every replica reads every promotion (plain XREAD from the stream's end, no consumer group: a
group would hand each event to one replica only) and converges with the registry at start and
every `STREAMOPS_PREDICTOR_CONVERGE_S`, so a replica that was down or missed an event catches
up. Predict requests and batch scoring arrive with issue 4's next steps.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import anyio.to_thread
from faststream import FastStream
from faststream.redis import RedisStreamMessage, StreamSub
from faststream.specification import AsyncAPI

from predictor.cache import ModelCache
from predictor.service import Predictor
from shared.broker import build_broker, redis_client
from shared.datasets import DatasetSpec, load_spec
from shared.delivery import parse_event
from shared.errors import InvalidEvent, ModelLoadFailed
from shared.events import ModelPromoted
from shared.registry import Registry
from shared.settings import PredictorSettings
from shared.telemetry import RedisStatusBoard, StatusBoard, beat, configure_logging
from shared.wire import entry_body

SERVICE = "predictor"
log = logging.getLogger(__name__)


def served_specs(settings: PredictorSettings) -> dict[str, DatasetSpec]:
    """The specs of the datasets this replica serves, by registered model name."""
    directory = settings.common.datasets_dir
    names = settings.datasets or sorted(p.parent.name for p in directory.glob("*/spec.yaml"))
    specs = (load_spec(directory, name) for name in names)
    return {spec.model_name: spec for spec in specs if spec.training is not None}


@dataclass
class Replica:
    settings: PredictorSettings
    cache: ModelCache
    board: StatusBoard
    registry: Registry | None = None
    predictor: Predictor | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Load the production models before anything else: a replica is ready only then."""
        if self.registry is None:
            from shared.registry import MlflowRegistry

            self.registry = MlflowRegistry(self.settings.common.mlflow_tracking_uri)
        self.predictor = Predictor(self.registry, served_specs(self.settings), self.cache)
        await self.converge()

    async def converge(self) -> None:
        assert self.predictor is not None
        try:
            await anyio.to_thread.run_sync(self.predictor.converge)
        except ModelLoadFailed as exc:
            log.error("converging with the registry: %s (the old version keeps serving)", exc)

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
        try:
            await anyio.to_thread.run_sync(self.predictor.promoted, event)
        except ModelLoadFailed as exc:
            log.error("not swapping in %s v%d: %s", event.model_name, event.version, exc)

    async def start_background(self) -> None:
        consumer = self.settings.common.consumer_name
        self.tasks.append(asyncio.create_task(beat(self.board, SERVICE, consumer)))
        self.tasks.append(asyncio.create_task(self._converge_forever()))

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
) -> FastStream:
    """The replica; `cache` and `registry` can be given to look inside or fake the registry."""
    settings = settings or PredictorSettings()
    common = settings.common
    configure_logging(common.log_level)
    broker = build_broker(common)
    client = redis_client(common)
    replica = Replica(settings, cache or ModelCache(), RedisStatusBoard(client), registry)
    promotions = StreamSub(ModelPromoted.stream, last_id="$")

    @broker.subscriber(stream=promotions, description=ModelPromoted.__doc__)
    async def on_promoted(msg: RedisStreamMessage) -> None:
        await replica.on_promoted(msg)

    async def close() -> None:
        await client.aclose()

    return FastStream(
        broker,
        specification=AsyncAPI(
            broker,
            title="streamops predictor",
            description="Serves production models, hot-reloaded.",
        ),
        on_startup=[replica.start],
        after_startup=[replica.start_background],
        on_shutdown=[replica.stop_background],
        after_shutdown=[close],
    )
