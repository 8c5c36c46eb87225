"""The predictor service: production models in memory, hot-reloaded on `model-promoted`.

Every replica reads every promotion (plain XREAD from the stream's end, no consumer group: a
group would hand each event to one replica only) and converges with the registry at start and
every `STREAMOPS_PREDICTOR_CONVERGE_S`, so a replica that was down or missed an event catches
up. This module wires: the replica's life is predictor/replica.py, the use case
predictor/service.py, predict batches predictor/online.py, batch jobs predictor/scoring_app.py.
"""

from __future__ import annotations

import logging
import time
from typing import TypeVar

from faststream import FastStream
from faststream.redis import RedisStreamMessage, StreamSub
from faststream.specification import AsyncAPI

from predictor.cache import ModelCache
from predictor.drift import DriftMonitor
from predictor.metrics import PredictorMetrics
from predictor.online import OnlinePredictor
from predictor.predlog import LogPolicy
from predictor.replica import SERVICE, Replica
from predictor.scoring_app import wire_scoring
from predictor.service import Predictor
from predictor.specs import SpecReader
from shared.broker import build_broker, fan_out_start, redis_client
from shared.delivery import parse_event
from shared.errors import InvalidEvent
from shared.events import Event, ModelPromoted, ModelTrained, PredictionsLogged
from shared.metrics import MetricsEndpoint, broker_middleware
from shared.model_loading import LoadPolicy
from shared.registry import MlflowRegistry, ServingRegistry
from shared.settings import PredictorSettings
from shared.telemetry import RedisStatusBoard, configure_logging
from shared.wire import entry_body

E = TypeVar("E", bound=Event)
log = logging.getLogger(__name__)


def build_app(
    settings: PredictorSettings | None = None,
    cache: ModelCache | None = None,
    registry: ServingRegistry | None = None,
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
    # MlflowRegistry imports mlflow (seconds), here rather than on the event loop, and talks
    # to the server only when a version is looked up.
    registry = registry or MlflowRegistry(common.mlflow_tracking_uri)
    read_specs = SpecReader(common.datasets_dir)  # again at each converge: specs may be added
    predictor = Predictor(
        registry,
        read_specs(),
        cache or ModelCache(),
        drift=metrics.drift,
        policy=LoadPolicy(tuple(settings.flavors), settings.pickle_allowed),
        serves=settings.serves,
        read_specs=read_specs,
        compiles=settings.compiles,
        threads=settings.threads,
        shadow_sample=settings.shadow_sample,
    )
    broker = build_broker(common, [broker_middleware(metrics.registry, SERVICE)])
    client = redis_client(common)
    log = (
        LogPolicy(settings.log_sample, settings.log_maxlen, settings.logs_features)
        if settings.log_predictions
        else None
    )
    online = OnlinePredictor(
        client, predictor, common.consumer_name, settings.read_batches, metrics=metrics, log=log
    )
    replica = Replica(settings, predictor, metrics, RedisStatusBoard(client), online, client)
    # Fan-out: every replica reads every promotion and every new version, from now on.
    start = fan_out_start(time.time())
    promotions = StreamSub(ModelPromoted.stream, last_id=start)

    @broker.subscriber(stream=promotions, description=ModelPromoted.__doc__)
    async def on_promoted(msg: RedisStreamMessage) -> None:
        event = _fanned_out(ModelPromoted, msg)
        if event is not None:
            await replica.promoted(event)

    # Fan-out too: every replica prefetches every new version of the models it may serve.
    trained = StreamSub(ModelTrained.stream, last_id=start)

    @broker.subscriber(stream=trained, description=ModelTrained.__doc__)
    async def on_trained(msg: RedisStreamMessage) -> None:
        event = _fanned_out(ModelTrained, msg)
        if event is not None:
            await replica.trained(event)

    # Documented only: the online loop XADDs log entries with its answers (predictor/online).
    broker.publisher(
        stream=PredictionsLogged.stream,
        schema=PredictionsLogged,
        description=PredictionsLogged.__doc__,
    )

    # Batch scoring (score-requested and its chunks): wired here.
    create_scoring_groups = wire_scoring(
        broker, predictor, metrics, client, settings, catch_up=replica.catch_up
    )

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
        after_startup=[replica.start_background],
        on_shutdown=[replica.stop_background],
        after_shutdown=[close],
    )


def _fanned_out(event_type: type[E], msg: RedisStreamMessage) -> E | None:
    """The event of a fan-out entry (read without a group, so never acked nor redelivered: a
    malformed one is logged and skipped)."""
    message_id = msg.raw_message.get("message_ids", [b""])[0]
    body = entry_body(msg.raw_message["data"])
    try:
        return parse_event(event_type, body, event_type.stream, str(message_id))
    except InvalidEvent as exc:
        log.warning("ignoring a malformed %s entry: %s", event_type.stream, exc)
        return None
