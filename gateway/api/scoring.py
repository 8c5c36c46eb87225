"""Batch scoring jobs: submit one (POST /v1/score), see where it stands (GET /v1/score/<id>)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from gateway.api.deps import Ctx, Mutating
from gateway.schemas import ScoreAccepted, ScoreRequest, errors
from shared.errors import JobNotFound, ModelNotFound, PayloadTooLarge
from shared.events import ScoreRequested
from shared.jobs import JobStatus
from shared.schema import ModelSchema, row_model
from shared.settings import GatewaySettings

router = APIRouter(tags=["batch"])
_REDIS = "Redis cannot be reached"


@router.post(
    "/v1/score",
    status_code=202,
    response_model=ScoreAccepted,
    dependencies=Mutating,
    responses=errors(
        {
            404: "No model of that name is served here",
            413: "Too many inline rows, or a body over the size limit",
            503: _REDIS,
        },
        keyed=True,
        json_body=True,
    ),
)
async def score(body: ScoreRequest, ctx: Ctx) -> ScoreAccepted:
    """Submit a batch job; `GET /v1/score/{job_id}` says where it stands."""
    # The models the predict routes serve, with the same columns (a model advertised a
    # moment ago included).
    schema = await ctx.models.find(body.model_name)
    if schema is None:
        raise ModelNotFound(f"no model {body.model_name!r} is served here")
    rows = None if body.rows is None else _checked_rows(schema, body.rows, ctx.settings)
    job_id = body.job_id or uuid.uuid4().hex
    event = ScoreRequested(job_id=job_id, model_name=body.model_name, rows=rows, input=body.input)
    await ctx.bus.publish(event)
    return ScoreAccepted(
        job_id=job_id, status_url=f"/v1/score/{job_id}", event_id=str(event.event_id)
    )


def _checked_rows(
    schema: ModelSchema, rows: list[dict[str, Any]], settings: GatewaySettings
) -> tuple[Any, ...]:
    limit = settings.max_rows_per_request
    if len(rows) > limit:
        raise PayloadTooLarge(f"{len(rows)} inline rows; the limit is {limit}")
    row_type = row_model(schema)
    for i, row in enumerate(rows):  # the same checks as a predict request
        try:
            row_type.model_validate(row)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            raise RequestValidationError(
                [{**e, "loc": ("body", "rows", i, *e["loc"])} for e in errors]
            ) from None
    return tuple(rows)


@router.get(
    "/v1/score/{job_id}",
    response_model=JobStatus,
    responses=errors(
        {404: "No job of that id (unknown, not planned yet, or expired)", 503: _REDIS}
    ),
)
async def score_status(job_id: str, ctx: Ctx) -> JobStatus:
    status = await ctx.bus.job(job_id)
    if status is None:
        raise JobNotFound(f"no scoring job {job_id!r} (unknown, not planned yet, or expired)")
    return status
