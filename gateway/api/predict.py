"""POST /v1/models/<name>/predict: one route per served model, its body from the spec."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response

from gateway.api.deps import Ctx, request_id
from gateway.schemas import PredictResponse, errors, predict_request
from shared.datasets import DatasetSpec
from shared.errors import ModelNotFound, NoPredictor, PayloadTooLarge

ANSWERS = errors(
    {
        413: "Too many rows, or a body over the size limit",
        422: "Rows that do not match the spec, or that the model refuses (InvalidRows)",
        502: "The predictor failed on these rows (PredictionFailed)",
        503: "No predictor alive, or no version of the model in service",
        504: "No predictor answered in time",
    },
    json_body=True,
)


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
        responses=ANSWERS,
    )
    return router


# Included after the models' own routes, so it only catches the names nobody serves.
unknown = APIRouter()


@unknown.post("/v1/models/{model_name}/predict", tags=["predict"], include_in_schema=False)
async def predict_unknown(model_name: str, ctx: Ctx) -> None:
    raise ModelNotFound(
        f"no model {model_name!r} is served here (served: {sorted(ctx.specs) or 'none'})"
    )
