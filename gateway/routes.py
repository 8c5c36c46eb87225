"""The gateway's endpoints. Handlers check and translate; the work is done by the services
behind the streams, by shared.promotion and by the coalescer."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Header, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from gateway.coalesce import Coalescer
from gateway.fleet import Fleet
from gateway.metrics import GatewayMetrics
from gateway.schemas import (
    Accepted,
    IngestRequest,
    ModelInfo,
    PredictResponse,
    Promoted,
    PromoteRequest,
    ScoreAccepted,
    ScoreRequest,
    VersionInfo,
    predict_request,
)
from shared.datasets import DatasetSpec, feature_row_model, load_spec
from shared.errors import (
    JobNotFound,
    ModelNotFound,
    NoPredictor,
    PayloadTooLarge,
    Unauthorized,
)
from shared.events import CsvSource, DataArrived, Event, ModelPromoted, ScoreRequested
from shared.registry import Registry
from shared.settings import GatewaySettings
from shared.stream_metrics import StreamsCollector
from shared.wire import entry_fields


@dataclass
class Context:
    settings: GatewaySettings
    specs: dict[str, DatasetSpec]
    client: aioredis.Redis
    coalescer: Coalescer
    fleet: Fleet
    metrics: GatewayMetrics
    registry: Registry | None = None
    _streams: StreamsCollector | None = None

    def the_registry(self) -> Registry:
        # Created on first use, in a thread (callers use to_thread): importing mlflow costs
        # seconds, which the event loop, busy with predictions, must not wait for.
        if self.registry is None:
            from shared.registry import MlflowRegistry

            self.registry = MlflowRegistry(self.settings.common.mlflow_tracking_uri)
        return self.registry

    def streams_collector(self) -> StreamsCollector:
        if self._streams is None:
            import redis

            from shared.broker import redis_url

            client = redis.Redis.from_url(redis_url(self.settings.common))
            self._streams = StreamsCollector(client)
        return self._streams

    async def publish(self, event: Event) -> str:
        message_id = await self.client.xadd(event.stream, entry_fields(event))  # type: ignore[arg-type]
        return message_id.decode() if isinstance(message_id, bytes) else str(message_id)


def context(request: Request) -> Context:
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


# --- health -------------------------------------------------------------------------------------

health = APIRouter(tags=["health"])


@health.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get("/metrics", include_in_schema=False)
async def metrics(ctx: Ctx) -> Response:
    """The gateway's own metrics and the streams' (XINFO, read at each scrape)."""
    body, kind = await anyio.to_thread.run_sync(ctx.metrics.exposition, ctx.streams_collector())
    return Response(body, media_type=kind)


@health.get("/readyz", summary="Redis answers and a predictor serves a model")
async def readyz(ctx: Ctx, response: Response) -> dict[str, Any]:
    try:
        await ctx.client.ping()
        await ctx.fleet.refresh()
        redis_ok = True
    except Exception:
        redis_ok = False
    serving = {r: m for r, m in ctx.fleet.replicas.items() if m}
    ready = redis_ok and bool(serving)
    response.status_code = 200 if ready else 503
    return {"ready": ready, "redis": redis_ok, "predictors": serving}


# --- predict ------------------------------------------------------------------------------------


def predict_router(spec: DatasetSpec, max_rows: int) -> APIRouter:
    """POST /v1/models/<name>/predict for one model, its body generated from the spec."""
    router = APIRouter(tags=["predict"])
    body_type = predict_request(spec, max_rows)
    features = [(f"c{i}", col.name) for i, col in enumerate(spec.feature_columns)]
    name = spec.model_name

    async def predict(
        body: Any,
        ctx: Ctx,
        x_request_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        rows = body.rows
        if len(rows) > max_rows:
            raise PayloadTooLarge(f"{len(rows)} rows in one request; the limit is {max_rows}")
        if not ctx.fleet.alive():
            raise NoPredictor("no predictor replica is running")
        columns = {column: [getattr(r, field) for r in rows] for field, column in features}
        answer = await ctx.coalescer.predict(name, columns, len(rows))
        rid = request_id(x_request_id)
        out = PredictResponse(
            model_name=name,
            model_version=answer.batch.model_version or 0,
            request_id=rid,
            predictions=answer.predictions,
            classes=answer.batch.classes,
            probabilities=answer.probabilities,
        )
        ctx.metrics.predictions(name, out.model_version, out.predictions, out.probabilities)
        headers = {
            "X-Model-Version": str(out.model_version),
            "X-Request-Id": rid,
            "X-Served-By": answer.batch.replica,
        }
        return Response(out.model_dump_json(), media_type="application/json", headers=headers)

    # The body's type exists only at run time: FastAPI reads it from the annotations.
    predict.__annotations__["body"] = body_type
    router.add_api_route(
        f"/v1/models/{name}/predict",
        predict,
        methods=["POST"],
        response_model=PredictResponse,
        summary=f"Predict with {name} (the version in production)",
        responses={
            413: {"description": "Too many rows or body too large"},
            503: {"description": "No predictor, or no version in service"},
            504: {"description": "No predictor answered in time"},
        },
    )
    return router


# --- everything else ----------------------------------------------------------------------------

api = APIRouter()


@api.post("/v1/models/{model_name}/predict", tags=["predict"], include_in_schema=False)
async def predict_unknown(model_name: str, ctx: Ctx) -> None:
    raise ModelNotFound(
        f"no model {model_name!r} is served here (served: {sorted(ctx.specs) or 'none'})"
    )


@api.get("/v1/models/{model_name}", tags=["models"], response_model=ModelInfo)
async def model_info(model_name: str, ctx: Ctx) -> ModelInfo:
    registry = await anyio.to_thread.run_sync(ctx.the_registry)  # first use imports mlflow
    versions = await anyio.to_thread.run_sync(registry.versions, model_name)
    if not versions:
        raise ModelNotFound(f"no registered model {model_name!r}")
    aliases = await anyio.to_thread.run_sync(registry.aliases, model_name)
    return ModelInfo(
        model_name=model_name,
        aliases=aliases,
        versions=[
            VersionInfo(
                version=v.version,
                run_id=v.run_id,
                aliases=sorted(a for a, n in aliases.items() if n == v.version),
                metrics=v.metrics,
                tags=v.tags,
            )
            for v in versions
        ],
        serving=ctx.fleet.serving(model_name),
    )


@api.post(
    "/v1/models/{model_name}/promote",
    tags=["models"],
    response_model=Promoted,
    dependencies=Mutating,
)
async def promote_version(model_name: str, body: PromoteRequest, ctx: Ctx) -> Promoted:
    from shared.promotion import promote

    registry = await anyio.to_thread.run_sync(ctx.the_registry)  # first use imports mlflow
    versions = await anyio.to_thread.run_sync(registry.versions, model_name)
    if body.version not in {v.version for v in versions}:
        raise ModelNotFound(f"model {model_name!r} has no version {body.version}")
    event = await anyio.to_thread.run_sync(promote, registry, model_name, body.version, "manual")
    return await _announce(ctx, event)


@api.post(
    "/v1/models/{model_name}/rollback",
    tags=["models"],
    response_model=Promoted,
    dependencies=Mutating,
)
async def rollback_version(model_name: str, ctx: Ctx) -> Promoted:
    from shared.promotion import rollback

    registry = await anyio.to_thread.run_sync(ctx.the_registry)  # first use imports mlflow
    if not await anyio.to_thread.run_sync(registry.versions, model_name):
        raise ModelNotFound(f"no registered model {model_name!r}")
    event = await anyio.to_thread.run_sync(rollback, registry, model_name)
    return await _announce(ctx, event)


async def _announce(ctx: Context, event: ModelPromoted) -> Promoted:
    await ctx.publish(event)
    return Promoted(
        model_name=event.model_name,
        version=event.version,
        previous_version=event.previous_version,
        reason=event.reason,
        event_id=str(event.event_id),
    )


@api.post(
    "/v1/datasets/{dataset}/ingest",
    tags=["ingest"],
    status_code=202,
    response_model=Accepted,
    dependencies=Mutating,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": IngestRequest.model_json_schema()},
            },
        }
    },
)
async def ingest(dataset: str, request: Request, ctx: Ctx) -> Accepted:
    """Upload a CSV file (`Content-Type: text/csv`) or name a source (JSON); publishes
    `data-arrived` and answers at once: follow the correlation id on the streams."""
    load_spec(ctx.settings.common.datasets_dir, dataset)  # UnknownDataset → 404
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind == "text/csv":
        source: Any = CsvSource(uri=str(await _save_upload(request, ctx.settings.inbox, dataset)))
    else:
        source = _parse(IngestRequest, await request.body()).source
    event = DataArrived(dataset=dataset, source=source)
    await ctx.publish(event)
    return Accepted(
        event_id=str(event.event_id), correlation_id=event.correlation_id, stream=event.stream
    )


async def _save_upload(request: Request, inbox: Path, dataset: str) -> Path:
    """Stream the body to the inbox (a temporary name first: the ingestor never sees half)."""
    directory = inbox / dataset
    await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
    final = directory / f"{uuid.uuid4().hex}.csv"
    partial = final.with_suffix(".partial")
    try:
        async with await anyio.open_file(partial, "wb") as out:
            async for chunk in request.stream():
                await out.write(chunk)
        await anyio.Path(partial).rename(final)
    finally:
        await anyio.Path(partial).unlink(missing_ok=True)
    return final


def _parse(model: type[BaseModel], body: bytes) -> Any:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


@api.post(
    "/v1/score",
    tags=["batch"],
    status_code=202,
    response_model=ScoreAccepted,
    dependencies=Mutating,
)
async def score(body: ScoreRequest, ctx: Ctx) -> ScoreAccepted:
    """Submit a batch job; `GET /v1/score/{job_id}` says where it stands."""
    spec = ctx.specs.get(body.model_name)
    if spec is None:
        raise ModelNotFound(f"no model {body.model_name!r} is served here")
    rows = None
    if body.rows is not None:
        if len(body.rows) > ctx.settings.max_rows_per_request:
            raise PayloadTooLarge(
                f"{len(body.rows)} inline rows; the limit is {ctx.settings.max_rows_per_request}"
            )
        row_type = feature_row_model(spec)
        for i, row in enumerate(body.rows):  # the same checks as a predict request
            try:
                row_type.model_validate(row)
            except ValidationError as exc:
                errors = exc.errors(include_url=False)
                raise RequestValidationError(
                    [{**e, "loc": ("body", "rows", i, *e["loc"])} for e in errors]
                ) from None
        rows = tuple(body.rows)
    job_id = body.job_id or uuid.uuid4().hex
    event = ScoreRequested(job_id=job_id, model_name=body.model_name, rows=rows, input=body.input)
    await ctx.publish(event)
    return ScoreAccepted(
        job_id=job_id, status_url=f"/v1/score/{job_id}", event_id=str(event.event_id)
    )


@api.get("/v1/score/{job_id}", tags=["batch"])
async def score_status(job_id: str, ctx: Ctx) -> Any:
    from shared.jobs import JobStatus, job_status

    status: JobStatus | None = await job_status(ctx.client, job_id)
    if status is None:
        raise JobNotFound(f"no scoring job {job_id!r} (unknown, not planned yet, or expired)")
    return status
