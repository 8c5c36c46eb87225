"""POST /v1/models/<name>/feedback: labels for rows a model answered, published as
`labels-arrived` for the label joiners (docs/feedback.md)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import Ctx, Mutating
from gateway.schemas import Accepted, errors
from shared.events import Label, LabelsArrived


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[Label] = Field(
        min_length=1,
        max_length=10_000,
        description="The truth for answered rows: `request_id` as returned in X-Request-Id "
        "(or given by you), `row` within that request (0 for one row), `label`.",
    )


router = APIRouter(tags=["feedback"])


@router.post(
    "/v1/models/{model_name}/feedback",
    status_code=202,
    response_model=Accepted,
    dependencies=Mutating,
    responses=errors(
        {503: "Redis cannot be reached to publish labels-arrived"}, keyed=True, json_body=True
    ),
)
async def feedback(model_name: str, body: FeedbackRequest, ctx: Ctx) -> Accepted:
    """Publish the labels and answer at once. They are joined to the prediction log within
    seconds; a label whose request is unknown is counted and kept apart, never dropped."""
    event = LabelsArrived(model_name=model_name, labels=body.labels)
    await ctx.bus.publish(event)
    return Accepted(
        event_id=str(event.event_id), correlation_id=event.correlation_id, stream=event.stream
    )
