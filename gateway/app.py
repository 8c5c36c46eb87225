"""The HTTP gateway: predictions, ingest, promotion, batch jobs, health.

`build_app(settings)` is the factory (gunicorn runs `gateway.app:build_app()` in every worker).
Each worker coalesces its own predict requests (gateway.coalesce), reads the predictors'
heartbeats (gateway.fleet) and keeps its own predict routes in step with the models served
(gateway.routes: dataset specs and what the replicas advertise, with no restart); the endpoints
are in gateway.api, one module per resource. Named
errors from shared.errors become HTTP statuses here, in STATUS, and nowhere else: every error
answer has the body {"error", "detail"}, except request validation's 422 (FastAPI's own).
"""

from __future__ import annotations

import contextlib
import http
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from gateway.api import feedback, health, ingest, models, scoring
from gateway.api.deps import Bus, Context, Predictions, Replicas
from gateway.bus import RedisBus
from gateway.coalesce import Coalescer
from gateway.fastpath import FastPredict
from gateway.fleet import Fleet
from gateway.limits import BodyLimit
from gateway.metrics import GatewayMetrics, RequestMetrics
from gateway.routes import ServedRoutes
from gateway.specs import SpecSchemas
from shared.broker import redis_client
from shared.errors import (
    InvalidCanary,
    InvalidRows,
    InvalidShadow,
    JobNotFound,
    ModelNotFound,
    NoModelInService,
    NoPredictor,
    NothingToRollBack,
    PayloadTooLarge,
    PredictionFailed,
    PredictorTimeout,
    StreamopsError,
    StreamsUnavailable,
    Unauthorized,
    UnknownDataset,
    VersionNotFound,
)
from shared.registry import GatewayRegistry
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
    InvalidShadow: 409,
    InvalidCanary: 409,
    PayloadTooLarge: 413,
    InvalidRows: 422,
    # The upstream predictor took the rows and failed: a bad gateway, not the gateway's fault.
    PredictionFailed: 502,
    NoModelInService: 503,
    NoPredictor: 503,
    StreamsUnavailable: 503,
    PredictorTimeout: 504,
}


def build_app(
    settings: GatewaySettings | None = None,
    registry: GatewayRegistry | None = None,
    *,
    coalescer: Predictions | None = None,
    fleet: Replicas | None = None,
    bus: Bus | None = None,
    reconcile_s: float = 1.0,
) -> FastAPI:
    """The app; the parts not given are made on Redis (tests give fakes, which run no Redis).
    Every `reconcile_s` the predict routes follow the models served."""
    settings = settings or GatewaySettings()
    configure_logging(settings.common.log_level)
    client = redis_client(settings.common)  # connects on first use only
    started: list[Coalescer | Fleet] = []  # the parts made here, which the lifespan runs
    metrics = GatewayMetrics()
    if coalescer is None:
        coalescer = Coalescer(client, settings, answered=metrics.answered)
        started.append(coalescer)
    if fleet is None:
        fleet = Fleet(client)
        started.append(fleet)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(client.aclose)
            for part in [*started, served]:  # the routes last: they read the fleet
                await part.start()
                stack.push_async_callback(part.stop)
            yield

    # /docs and /redoc serve Swagger UI and ReDoc from the package: no CDN to reach.
    app = FastAPIOffline(
        # FastAPI's own OpenTelemetry instrumentation asks every request whether a provider
        # is configured (about 4% of a predict's CPU); the gateway's telemetry is Prometheus.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="streamops gateway",
        description="Predictions from the models in production, ingest, promotion and batch "
        "scoring. Mutating endpoints need the API key (`X-API-Key`) when one is configured.",
        version="1",
        lifespan=lifespan,
    )
    bus = bus or RedisBus(client)
    specs = SpecSchemas(settings.common.datasets_dir)
    max_rows = settings.max_rows_per_request
    served = ServedRoutes(app, specs, fleet, max_rows, interval=reconcile_s)
    context = Context(settings, served, bus, coalescer, fleet, metrics, registry)
    app.state.context = context
    app.include_router(health.router)
    served.install()  # the models' predict routes, then the catch-all for the other names
    app.include_router(models.router)
    app.include_router(ingest.router)
    app.include_router(scoring.router)
    app.include_router(feedback.router)
    app.add_middleware(BodyLimit, limit_for=_limits(settings), answer=error_response)
    app.add_middleware(RequestMetrics, metrics=metrics)
    if settings.fast_path:  # the outermost: a valid predict request meets none of the above
        limit = settings.max_body_bytes
        app.add_middleware(
            FastPredict, served=served, context=context, limit=limit, answer=error_response
        )
    _error_handlers(app)
    return app


def _limits(settings: GatewaySettings) -> Any:
    def limit_for(path: str) -> int:
        if path.startswith("/v1/datasets/"):
            return settings.max_upload_bytes
        return settings.max_body_bytes

    return limit_for


def error_response(exc: StreamopsError) -> JSONResponse:
    """The answer to a named error: its status from STATUS (500 when it has none)."""
    status = next((s for t, s in STATUS.items() if isinstance(exc, t)), 500)
    headers = {"WWW-Authenticate": "ApiKey"} if status == 401 else None
    return JSONResponse(
        {"error": type(exc).__name__, "detail": str(exc)}, status_code=status, headers=headers
    )


def _finite(value: Any) -> Any:
    """`value` with every float that JSON cannot hold (NaN, infinities) as its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def internal_error() -> JSONResponse:
    return JSONResponse(
        {"error": "InternalError", "detail": "unexpected error; the gateway's log says more"},
        status_code=500,
    )


def _error_handlers(app: FastAPI) -> None:
    async def named(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StreamopsError)  # registered for StreamopsError only
        response = error_response(exc)
        if response.status_code == 500:
            log.error("unexpected %s on %s: %s", type(exc).__name__, request.url.path, exc)
        return response

    async def routing(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's own answers (no such path, method not allowed), in the same body.
        assert isinstance(exc, HTTPException)
        phrase = http.HTTPStatus(exc.status_code).phrase
        return JSONResponse(
            {"error": phrase.title().replace(" ", "").replace("-", ""), "detail": exc.detail},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug: the error body, without internals. Starlette raises the exception again once
        # this is sent, so the server logs its traceback; this line says which request it was.
        log.error("unexpected %s on %s: %s", type(exc).__name__, request.url.path, exc)
        return internal_error()

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        # FastAPI's own 422, except that a number JSON cannot hold (a NaN that json.loads
        # read) is shown as text: FastAPI's answer would fail to render it and become a 500.
        assert isinstance(exc, RequestValidationError)
        detail = _finite(jsonable_encoder(exc.errors()))
        return JSONResponse({"detail": detail}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StreamopsError, named)
    app.add_exception_handler(HTTPException, routing)
    app.add_exception_handler(Exception, unexpected)
