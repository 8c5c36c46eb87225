"""POST /v1/datasets/<dataset>/ingest: upload a CSV file or name a source."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from gateway.api.deps import Ctx, Mutating
from gateway.schemas import Accepted, IngestRequest, errors
from shared.datasets import load_spec
from shared.events import CsvSource, DataArrived

router = APIRouter(tags=["ingest"])


@router.post(
    "/v1/datasets/{dataset}/ingest",
    status_code=202,
    response_model=Accepted,
    dependencies=Mutating,
    responses=errors(
        {
            404: "No dataset spec of that name",
            413: "Upload over the size limit",
            503: "Redis cannot be reached to publish data-arrived",
        },
        keyed=True,
    ),
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
    await ctx.bus.publish(event)
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
