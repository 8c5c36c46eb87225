"""The HTTP gateway: predictions, ingest, promotion, batch jobs, health.

`build_app(settings)` is the factory (gunicorn runs `gateway.app:build_app()` in every worker).
Each worker coalesces its own predict requests (gateway.coalesce) and reads the predictors'
heartbeats (gateway.fleet). Named errors from shared.errors become HTTP statuses here and
nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gateway import routes
from gateway.coalesce import Coalescer
from gateway.fleet import Fleet
from gateway.limits import BodyLimit
from gateway.metrics import GatewayMetrics, RequestMetrics
from shared.broker import redis_client
from shared.datasets import served_specs
from shared.errors import (
    InvalidRows,
    JobNotFound,
    ModelNotFound,
    NoModelInService,
    NoPredictor,
    NothingToRollBack,
    PayloadTooLarge,
    PredictorTimeout,
    StreamopsError,
    Unauthorized,
    UnknownDataset,
    VersionNotFound,
)
from shared.registry import Registry
from shared.settings import GatewaySettings
from shared.telemetry import configure_logging

log = logging.getLogger(__name__)

STATUS: dict[type[StreamopsError], int] = {
    Unauthorized: 401,
    UnknownDataset: 404,
    ModelNotFound: 404,
    JobNotFound: 404,
    VersionNotFound: 404,
    NothingToRollBack: 409,
    PayloadTooLarge: 413,
    InvalidRows: 422,
    NoModelInService: 503,
    NoPredictor: 503,
    PredictorTimeout: 504,
}


def build_app(settings: GatewaySettings | None = None, registry: Registry | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    configure_logging(settings.common.log_level)
    specs = served_specs(settings.common.datasets_dir)
    client = redis_client(settings.common)
    coalescer = Coalescer(client, settings)
    fleet = Fleet(client)
    metrics = GatewayMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await coalescer.start()
        await fleet.start()
        yield
        await fleet.stop()
        await coalescer.stop()
        await client.aclose()

    app = FastAPI(
        title="streamops gateway",
        description="Predictions from the models in production, ingest, promotion and batch "
        "scoring. Mutating endpoints need the API key (`X-API-Key`) when one is configured.",
        version="1",
        lifespan=lifespan,
    )
    app.state.context = routes.Context(settings, specs, client, coalescer, fleet, metrics, registry)
    app.include_router(routes.health)
    for spec in specs.values():
        app.include_router(routes.predict_router(spec, settings.max_rows_per_request))
    app.include_router(routes.api)
    app.add_middleware(BodyLimit, limit_for=_limits(settings))
    app.add_middleware(RequestMetrics, metrics=metrics)
    _error_handlers(app)
    return app


def _limits(settings: GatewaySettings) -> Any:
    def limit_for(path: str) -> int:
        if path.startswith("/v1/datasets/"):
            return settings.max_upload_bytes
        return settings.max_body_bytes

    return limit_for


def _error_handlers(app: FastAPI) -> None:
    async def named(request: Request, exc: Exception) -> JSONResponse:
        status = next((s for t, s in STATUS.items() if isinstance(exc, t)), 500)
        if status == 500:
            log.error("unexpected %s on %s: %s", type(exc).__name__, request.url.path, exc)
        headers = {"WWW-Authenticate": "ApiKey"} if status == 401 else None
        return JSONResponse(
            {"error": type(exc).__name__, "detail": str(exc)}, status_code=status, headers=headers
        )

    app.add_exception_handler(StreamopsError, named)
