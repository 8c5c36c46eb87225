"""POST /v1/models/<name>/predict: one route per served model, its body from the model's input
schema. The routes come and go with the models (gateway.routes); a name with no route of its
own reaches the catch-all there, which answers 404 ModelNotFound (`not_served`)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Response
from pydantic import BaseModel

from gateway import canary
from gateway.api.deps import Context, Ctx, request_id
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


async def _answer(
    ctx: Context,
    name: str,
    columns: tuple[str, ...],
    rows: Sequence[tuple[Any, ...]],
    request_id: str,
    *,
    target: int | None,
) -> Answer:
    """The coalescer's answer. Replicas share one stream, so a batch may reach one that has not
    loaded the model yet (it appeared a moment ago, or that replica just restarted) while
    another serves it: sent again then, a few times, rather than answered 503."""
    for _ in range(NO_MODEL_TRIES - 1):
        try:
            return await ctx.coalescer.predict(name, columns, rows, request_id, target)
        except NoModelInService:
            if not ctx.fleet.serving(name):
                raise
    return await ctx.coalescer.predict(name, columns, rows, request_id, target)


@dataclass(frozen=True)
class Plan:
    """How a model's predict requests are answered: its body type, and the row fields that
    become the columns sent to the predictors (one plan per route, shared by the FastAPI
    route and the fast path of gateway.fastpath)."""

    name: str
    source: str  # where the columns come from: "spec" or "signature"
    body_type: type[BaseModel]
    max_rows: int
    columns: tuple[str, ...]
    values: Callable[[Any], tuple[Any, ...]]  # a validated row → its values, in column order

    @classmethod
    def of(cls, schema: ModelSchema, max_rows: int) -> Plan:
        return cls(
            schema.model_name,
            schema.source,
            predict_request(schema, max_rows),
            max_rows,
            tuple(col.name for col in schema.columns),
            _getter(tuple(f"c{i}" for i in range(len(schema.columns)))),
        )

    def rows_of(self, data: Any) -> Sequence[Any]:
        """A decoded JSON body validated as the route's body: its rows (or ValidationError)."""
        body: Any = self.body_type.model_validate(data)
        rows: Sequence[Any] = body.rows
        return rows

    def values_of(self, rows: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Validated rows → each row's values in `columns` order (the coalescer transposes
        the rows of a whole batch at once)."""
        return list(map(self.values, rows))


def _getter(fields: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if len(fields) == 1:  # attrgetter of one name gives the value, not a 1-tuple
        (only,) = fields
        return lambda row: (getattr(row, only),)
    if not fields:
        return lambda row: ()
    return operator.attrgetter(*fields)


async def answer(
    ctx: Context,
    plan: Plan,
    rows: Sequence[Any],
    x_request_id: str | None,
    routing_key: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The answer to validated rows: the JSON body and the headers (named errors raised).
    A model with a canary answers with it when the routing key (else the request id) falls
    in its share (gateway.canary)."""
    if len(rows) > plan.max_rows:
        raise PayloadTooLarge(f"{len(rows)} rows in one request; the limit is {plan.max_rows}")
    if not ctx.fleet.alive():
        raise NoPredictor("no predictor replica is running")
    rid = request_id(x_request_id)
    target = canary.target(ctx.fleet.canary(plan.name), routing_key or rid)
    got = await _answer(ctx, plan.name, plan.columns, plan.values_of(rows), rid, target=target)
    version = got.batch.model_version or 0
    headers = {
        "X-Model-Version": str(version),
        "X-Request-Id": rid,
        "X-Served-By": got.batch.replica,
    }
    # PredictResponse's fields, in its order; the values come from a validated answer
    # (BatchPredicted), so there is nothing to validate again.
    out: dict[str, Any] = {
        "model_name": plan.name,
        "model_version": version,
        "request_id": rid,
        "predictions": got.predictions,
        "classes": got.batch.classes,
        "probabilities": got.probabilities,
    }
    try:
        return orjson.dumps(out), headers
    except orjson.JSONEncodeError:  # what orjson refuses (an integer over 64 bits, say)
        return PredictResponse.model_construct(**out).model_dump_json().encode(), headers


def predict_router(plan: Plan) -> APIRouter:
    """POST /v1/models/<name>/predict for one model, its body generated from its schema."""
    router = APIRouter(tags=["predict"])

    async def predict(
        body: Any,
        ctx: Ctx,
        x_request_id: Annotated[str | None, Header()] = None,
        x_routing_key: Annotated[
            str | None,
            Header(description="Keeps a client on one version while a canary runs."),
        ] = None,
    ) -> Response:
        content, headers = await answer(ctx, plan, body.rows, x_request_id, x_routing_key)
        return Response(content, media_type="application/json", headers=headers)

    # The body's type exists only at run time: FastAPI reads it from the annotations.
    predict.__annotations__["body"] = plan.body_type
    router.add_api_route(
        PATH.replace("{model_name}", plan.name),
        predict,
        methods=["POST"],
        response_model=PredictResponse,
        summary=f"Predict with {plan.name} (the version in production)",
        description=f"The rows' columns are {_FROM[plan.source]}.",
        responses=ANSWERS,
    )
    return router


def not_served(model_name: str, served: list[str]) -> ModelNotFound:
    """The 404 of a model with no route: no spec trains it and no replica serves it."""
    shown = sorted(served)[:SHOWN]
    more = f" and {len(served) - SHOWN} more" if len(served) > SHOWN else ""
    listed = f"{shown}{more}" if shown else "none"
    return ModelNotFound(f"no model {model_name!r} is served here (served: {listed})")
