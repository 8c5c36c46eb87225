"""The gateway's routes following the heartbeats in a real Redis: a model advertised with its
schema gets a route, an old heartbeat without schemas still counts, malformed heartbeats are
left out, a heartbeat that expires takes its model's route with it, and a real replica's
heartbeat carries the schemas the gateway serves."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from gateway.app import build_app as build_gateway
from predictor.app import build_app as build_predictor
from predictor.cache import ModelCache
from shared.keys import heartbeat_key
from shared.schema import Column, ModelSchema
from shared.settings import CommonSettings, GatewaySettings, PredictorSettings
from tests.support.data import CHURN_ROW
from tests.support.shelf import ModelShelf
from tests.support.streams import running
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
SIG = ModelSchema(
    model_name="fraud.v2",
    source="signature",
    columns=(Column(name="amount", type="float", dtype="float64"),),
)
SIG_PREDICT = "/v1/models/fraud.v2/predict"


@contextlib.asynccontextmanager
async def gateway(
    common: CommonSettings, tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = GatewaySettings(common=common, inbox=tmp_path / "inbox", predict_timeout_s=0.3)
    app = build_gateway(settings, registry=ModelShelf(), reconcile_s=0.05)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            yield app, http


async def beat(client: aioredis.Redis, replica: str, value: Any) -> None:
    raw = value if isinstance(value, str) else json.dumps(value)
    await client.set(heartbeat_key("predictor", replica), raw, ex=30)


async def test_heartbeats_old_new_and_malformed_give_the_routes_they_should(
    common: CommonSettings, client: aioredis.Redis, tmp_path: Path
) -> None:
    await beat(client, "old", {"models": {"churn": 1}})  # a replica from before schemas
    await beat(client, "garbled", "{not json")
    await beat(client, "odd", {"models": {"x": "seven"}, "schemas": {"x": {"columns": 1}}})
    new = {"models": {"fraud.v2": 4}, "schemas": {"fraud.v2": SIG.model_dump(mode="json")}}
    await beat(client, "new", new)
    async with gateway(common, tmp_path) as (app, http):
        document = (await http.get("/openapi.json")).json()
        # Routed, and sent to the stream; nobody answers it here, hence the 504.
        asked = await http.post(SIG_PREDICT, json={"rows": [{"amount": 1.5}]})
        refused = await http.post(SIG_PREDICT, json={"rows": [{"amount": "x"}]})
        odd = await http.post("/v1/models/x/predict", json={"rows": [{}]})
        fleet = app.state.context.fleet
        assert fleet.replicas == {
            "old": {"churn": 1},
            "garbled": {},
            "odd": {},
            "new": {"fraud.v2": 4},
        }

        await client.delete(heartbeat_key("predictor", "new"))  # as when it expires

        async def gone() -> bool:
            paths = (await http.get("/openapi.json")).json()["paths"]
            return SIG_PREDICT not in paths

        await eventually(gone, timeout=10, what="the route of a replica that stopped beating")
        after = await http.post(SIG_PREDICT, json={"rows": [{"amount": 1.5}]})
    assert {SIG_PREDICT, "/v1/models/churn/predict"} <= set(document["paths"])
    assert set(document["components"]["schemas"]["fraud_v2_features"]["properties"]) == {"amount"}
    assert (asked.status_code, asked.json()["error"]) == (504, "PredictorTimeout")
    assert refused.status_code == 422
    assert (odd.status_code, odd.json()["error"]) == (404, "ModelNotFound")
    assert (after.status_code, after.json()["error"]) == (404, "ModelNotFound")


async def test_a_replica_advertises_the_schema_the_gateway_serves(
    common: CommonSettings, shelf: ModelShelf, tmp_path: Path
) -> None:
    settings = PredictorSettings(common=common, converge_s=3600)
    predictor = build_predictor(settings, cache=ModelCache(), registry=shelf)
    async with running(predictor), gateway(common, tmp_path) as (app, http):
        answer = await http.post("/v1/models/churn/predict", json={"rows": [CHURN_ROW]})
        advertised = app.state.context.fleet.advertised()
    assert answer.status_code == 200, answer.text
    assert advertised["churn"].source == "spec"
    assert "tenure_months" in advertised["churn"].names
