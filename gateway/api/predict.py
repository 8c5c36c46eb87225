"""POST /v1/models/<name>/predict: one route per served model, its body from the model's input
schema. The routes come and go with the models (gateway.routes); a name with no route of its
own reaches the catch-all there, which answers 404 ModelNotFound (`not_served`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response

from gateway.api.deps import Ctx, request_id
from gateway.coalesce import Answer
from gateway.schemas import PredictResponse, errors, predict_request
from shared.errors import ModelNotFound, NoModelInService, NoPredictor, PayloadTooLarge
from shared.schema import ModelSchema

PATH = "/v1/models/{model_name}/predict"
SHOWN = 20  # served names listed in a 404's detail, at most
ANSWERS = errors(
    {
        413: "Too many rows, or a body over the size limit",
        422: "Rows that do not match the model's input, or that the model refuses (InvalidRows)",
        502: "The predictor failed on these rows (PredictionFailed)",
        503: "No predictor alive, or no version of the model in service",
        504: "No predictor answered in time",
    },
    json_body=True,
)
_FROM = {
    "spec": "its dataset spec's feature columns",
    "signature": "its MLflow signature's input columns",
}


# Tries for a batch that reached a replica not serving the model yet while another does.
NO_MODEL_TRIES = 3


async def _answer(ctx: Ctx, name: str, columns: dict[str, list[Any]], rows: int) -> Answer:
    """The coalescer's answer. Replicas share one stream, so a batch may reach one that has not
    loaded the model yet (it appeared a moment ago, or that replica just restarted) while
    another serves it: sent again then, a few times, rather than answered 503."""
    for _ in range(NO_MODEL_TRIES - 1):
        try:
            return await ctx.coalescer.predict(name, columns, rows)
        except NoModelInService:
            if not ctx.fleet.serving(name):
                raise
    return await ctx.coalescer.predict(name, columns, rows)


def predict_router(schema: ModelSchema, max_rows: int) -> APIRouter:
    """POST /v1/models/<name>/predict for one model, its body generated from its schema."""
    router = APIRouter(tags=["predict"])
    body_type = predict_request(schema, max_rows)
    features = [(f"c{i}", col.name) for i, col in enumerate(schema.columns)]
    name = schema.model_name

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
        answer = await _answer(ctx, name, columns, len(rows))
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
        PATH.replace("{model_name}", name),
        predict,
        methods=["POST"],
        response_model=PredictResponse,
        summary=f"Predict with {name} (the version in production)",
        description=f"The rows' columns are {_FROM[schema.source]}.",
        responses=ANSWERS,
    )
    return router


def not_served(model_name: str, served: list[str]) -> ModelNotFound:
    """The 404 of a model with no route: no spec trains it and no replica serves it."""
    shown = sorted(served)[:SHOWN]
    more = f" and {len(served) - SHOWN} more" if len(served) > SHOWN else ""
    listed = f"{shown}{more}" if shown else "none"
    return ModelNotFound(f"no model {model_name!r} is served here (served: {listed})")
