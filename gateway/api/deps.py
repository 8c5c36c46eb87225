"""What every handler gets: the context (settings, the served models and the ports below), the
API key check, and the request id.

The ports say what the handlers need of the coalescer, the fleet and Redis, and no more, so
the service tests (tests/service/test_gateway_handlers.py) can hand in small fakes.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from gateway.coalesce import Answer
from gateway.metrics import GatewayMetrics
from shared.errors import Unauthorized
from shared.events import Event
from shared.jobs import JobStatus
from shared.registry import GatewayRegistry
from shared.schema import ModelSchema
from shared.settings import GatewaySettings
from shared.stream_metrics import StreamsCollector


class Predictions(Protocol):
    """The coalescer, as the predict handler sees it."""

    async def predict(
        self,
        model_name: str,
        columns: tuple[str, ...],
        rows: Sequence[tuple[Any, ...]],
        request_id: str,
        target: int | None = None,
    ) -> Answer:
        """The answer for `rows`, each a tuple of values in `columns` order, of the request
        `request_id` (the prediction log's key), by version `target` (a canary) or
        production."""
        ...


class Replicas(Protocol):
    """The fleet: which predictor replicas beat, what each serves, and with which input."""

    @property
    def replicas(self) -> dict[str, dict[str, int]]: ...

    def alive(self) -> bool: ...

    def serving(self, model_name: str) -> dict[str, int]: ...

    def canary(self, model_name: str) -> tuple[int, float] | None:
        """The canary every replica of the model holds: (version, share routed to it)."""
        ...

    def advertised(self) -> dict[str, ModelSchema]:
        """Model → the input schema the replicas serve it with (the highest version's)."""
        ...

    async def refresh(self) -> None: ...


class Catalog(Protocol):
    """The models served here now: those of the dataset specs and those a replica advertises
    (gateway.routes keeps it, and their predict routes, up to date)."""

    def schema(self, model_name: str) -> ModelSchema | None: ...

    def names(self) -> list[str]: ...

    async def find(self, model_name: str) -> ModelSchema | None:
        """The schema, after reading the fleet and the specs again when it is not known yet
        (a model advertised a moment ago)."""
        ...


class Bus(Protocol):
    """Redis for everything but predictions: events out, job states in (gateway.bus)."""

    async def publish(self, event: Event) -> str: ...

    async def job(self, job_id: str) -> JobStatus | None: ...

    async def ping(self) -> bool: ...


@dataclass
class Context:
    settings: GatewaySettings
    models: Catalog
    bus: Bus
    coalescer: Predictions
    fleet: Replicas
    metrics: GatewayMetrics
    registry: GatewayRegistry | None = None
    _streams: StreamsCollector | None = None

    def the_registry(self) -> GatewayRegistry:
        # Created on first use, in a thread (callers use to_thread): importing mlflow costs
        # seconds, which the event loop, busy with predictions, must not wait for.
        if self.registry is None:
            from shared.registry import MlflowRegistry

            self.registry = MlflowRegistry(self.settings.common.mlflow_tracking_uri)
        return self.registry

    def streams_collector(self) -> StreamsCollector:
        if self._streams is None:
            from shared.broker import sync_redis_client

            client = sync_redis_client(self.settings.common)
            self._streams = StreamsCollector(client)
        return self._streams


async def context(request: Request) -> Context:
    # async: FastAPI runs a plain `def` dependency on its thread pool, a thread hop per
    # request that cost about 8% of the gateway's CPU under load.
    found: Context = request.app.state.context
    return found


Ctx = Annotated[Context, Depends(context)]
_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key.")
_bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token.")


def require_key(
    ctx: Ctx,
    key: Annotated[str | None, Security(_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    """Mutating endpoints: the configured API key, if any, in `X-API-Key` or as a bearer."""
    expected = ctx.settings.api_key
    if expected is None:
        return
    given = key or (bearer.credentials if bearer else "")
    if not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise Unauthorized("this endpoint needs the API key (X-API-Key header)")


Mutating = [Depends(require_key)]


def request_id(given: str | None) -> str:
    if given and 0 < len(given) <= 200 and given.isprintable():
        return given
    return uuid.uuid4().hex
