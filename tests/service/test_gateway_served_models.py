"""Models that appear and disappear while the gateway runs, with the in-memory fakes: a model a
replica starts advertising gets its predict route and its columns in /openapi.json, a model
nothing serves any more loses them, a spec dropped into the datasets dir gets a route, a
schema change replaces the route, and a malformed advertised schema is left out."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import build_app
from shared.schema import Column, ModelSchema
from shared.settings import BUNDLED_DATASETS, CommonSettings, GatewaySettings
from tests.service.gateway_fakes import FakeBus, FakeCoalescer, FakeFleet
from tests.support.data import CHURN_ROW
from tests.support.shelf import ModelShelf
from tests.support.toy import TOY_SPEC
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio
SIG = ModelSchema(
    model_name="fraud.v2",
    source="signature",
    columns=(
        Column(name="amount", type="float", dtype="float64"),
        Column(name="items", type="int", dtype="int32"),
        Column(name="country", type="str", nullable=True),
    ),
)
SIG_PREDICT = "/v1/models/fraud.v2/predict"
SIG_ROW = {"amount": 12.5, "items": 3, "country": "FR"}


@dataclass
class Rig:
    http: httpx.AsyncClient
    fleet: FakeFleet
    coalescer: FakeCoalescer
    datasets: Path

    async def document(self) -> dict[str, Any]:
        found: dict[str, Any] = (await self.http.get("/openapi.json")).json()
        return found

    async def paths(self) -> set[str]:
        return set((await self.document())["paths"])


Start = Callable[..., contextlib.AbstractAsyncContextManager[Rig]]


@pytest.fixture
def gateway(tmp_path: Path) -> Start:
    datasets = tmp_path / "datasets"
    shutil.copytree(BUNDLED_DATASETS, datasets)  # a copy, so a test can add specs to it

    @contextlib.asynccontextmanager
    async def start(
        fleet: FakeFleet | None = None, coalescer: FakeCoalescer | None = None
    ) -> AsyncIterator[Rig]:
        fleet = fleet if fleet is not None else FakeFleet({"fake-replica": {"churn": 3}})
        coalescer = coalescer or FakeCoalescer()
        common = CommonSettings(
            redis_url="redis://127.0.0.1:1/0",  # never used: every Redis part is a fake
            feature_store_root=tmp_path / "store",
            datasets_dir=datasets,
        )
        settings = GatewaySettings(common=common, inbox=tmp_path / "inbox")
        app = build_app(
            settings,
            ModelShelf(),
            coalescer=coalescer,
            fleet=fleet,
            bus=FakeBus(),
            reconcile_s=0.02,
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                yield Rig(http, fleet, coalescer, datasets)

    return start


async def test_a_model_advertised_after_start_answers_and_shows_its_columns(
    gateway: Start,
) -> None:
    answers = FakeCoalescer(predictions=[{"score": 0.9, "label": "fraud"}])
    async with gateway(coalescer=answers) as rig:
        before = await rig.paths()
        rig.fleet.advertise("fake-replica", SIG, version=7)
        # No wait: the miss reads the fleet again and routes the request at once.
        answer = await rig.http.post(SIG_PREDICT, json={"rows": [SIG_ROW, SIG_ROW]})
        document = await rig.document()
    assert SIG_PREDICT not in before
    assert answer.status_code == 200, answer.text
    assert rig.fleet.refreshes >= 1  # the miss read the heartbeats again
    body = answer.json()
    assert body["model_name"] == "fraud.v2"
    assert body["predictions"] == [{"score": 0.9, "label": "fraud"}] * 2
    assert body["classes"] is None
    assert body["probabilities"] is None
    ((name, columns, rows),) = rig.coalescer.asked
    assert (name, rows) == ("fraud.v2", 2)
    assert columns == {"amount": [12.5, 12.5], "items": [3, 3], "country": ["FR", "FR"]}
    assert SIG_PREDICT in document["paths"]
    row = document["components"]["schemas"]["fraud_v2_features"]
    assert set(row["properties"]) == {"amount", "items", "country"}
    assert set(row["required"]) == {"amount", "items"}  # country is nullable, so optional
    assert row["properties"]["items"]["maximum"] == 2**31 - 1  # int32, from the signature
    assert "churn_features" in document["components"]["schemas"]  # the spec model stays


async def test_rows_that_do_not_fit_an_advertised_schema_are_422_where_they_are_wrong(
    gateway: Start,
) -> None:
    async with gateway() as rig:
        rig.fleet.advertise("fake-replica", SIG, version=7)
        wrong_type = await rig.http.post(
            SIG_PREDICT, json={"rows": [SIG_ROW, {**SIG_ROW, "amount": "lots"}]}
        )
        missing = await rig.http.post(SIG_PREDICT, json={"rows": [{"country": "FR"}]})
        too_big = await rig.http.post(SIG_PREDICT, json={"rows": [{**SIG_ROW, "items": 2**40}]})
        empty = await rig.http.post(SIG_PREDICT, json={"rows": []})
    assert wrong_type.status_code == 422
    assert wrong_type.json()["detail"][0]["loc"] == ["body", "rows", 1, "amount"]
    assert missing.status_code == 422
    assert {tuple(e["loc"]) for e in missing.json()["detail"]} == {
        ("body", "rows", 0, "amount"),
        ("body", "rows", 0, "items"),
    }
    assert too_big.status_code == 422
    assert empty.status_code == 422
    assert not rig.coalescer.asked


async def test_a_model_no_replica_serves_any_more_is_404_and_leaves_the_document(
    gateway: Start,
) -> None:
    async with gateway() as rig:
        rig.fleet.advertise("fake-replica", SIG, version=7)
        assert (await rig.http.post(SIG_PREDICT, json={"rows": [SIG_ROW]})).status_code == 200
        rig.fleet.withdraw("fake-replica", "fraud.v2")

        async def route_gone() -> bool:
            return SIG_PREDICT not in await rig.paths()

        await eventually(route_gone, timeout=5, what="the route of a withdrawn model removed")
        answer = await rig.http.post(SIG_PREDICT, json={"rows": [SIG_ROW]})
        spec_model = await rig.http.post("/v1/models/churn/predict", json={"rows": [CHURN_ROW]})
        components = (await rig.document())["components"]["schemas"]
    assert answer.status_code == 404
    assert answer.json()["error"] == "ModelNotFound"
    detail = answer.json()["detail"]
    assert detail.startswith("no model 'fraud.v2' is served here (served: [")
    assert "'churn'" in detail
    assert "fraud.v2'," not in detail
    assert "fraud_v2_features" not in components
    assert spec_model.status_code == 200


async def test_a_spec_model_no_replica_serves_keeps_its_route_and_says_why(
    gateway: Start,
) -> None:
    async with gateway(fleet=FakeFleet()) as rig:
        answer = await rig.http.post("/v1/models/churn/predict", json={"rows": [CHURN_ROW]})
        paths = await rig.paths()
    assert "/v1/models/churn/predict" in paths
    assert (answer.status_code, answer.json()["error"]) == (503, "NoPredictor")


async def test_a_spec_added_while_running_gets_a_route(gateway: Start) -> None:
    async with gateway() as rig:
        assert "/v1/models/toy/predict" not in await rig.paths()
        (rig.datasets / "toy").mkdir()
        (rig.datasets / "toy" / "spec.yaml").write_text(TOY_SPEC)

        async def routed() -> bool:
            return "/v1/models/toy/predict" in await rig.paths()

        await eventually(routed, timeout=5, what="the new spec's route")
        good = await rig.http.post(
            "/v1/models/toy/predict", json={"rows": [{"a": 1.0, "b": 2.0, "flag": True}]}
        )
        bad = await rig.http.post("/v1/models/toy/predict", json={"rows": [{"a": 1.0}]})
        document = await rig.document()
    assert good.status_code == 200, good.text
    assert bad.status_code == 422
    assert set(document["components"]["schemas"]["toy_features"]["properties"]) == {
        "a",
        "b",
        "flag",
    }


async def test_a_changed_schema_replaces_the_route(gateway: Start) -> None:
    wider = SIG.model_copy(
        update={"columns": (*SIG.columns, Column(name="channel", type="str", dtype=None))}
    )
    async with gateway() as rig:
        rig.fleet.advertise("fake-replica", SIG, version=7)
        assert (await rig.http.post(SIG_PREDICT, json={"rows": [SIG_ROW]})).status_code == 200
        rig.fleet.advertise("fake-replica", wider, version=8)

        async def replaced() -> bool:
            row = (await rig.document())["components"]["schemas"]["fraud_v2_features"]
            return "channel" in row["properties"]

        await eventually(replaced, timeout=5, what="the route with the new column")
        old_rows = await rig.http.post(SIG_PREDICT, json={"rows": [SIG_ROW]})
        new_rows = await rig.http.post(SIG_PREDICT, json={"rows": [{**SIG_ROW, "channel": "web"}]})
        paths = [p for p in (await rig.document())["paths"] if p == SIG_PREDICT]
    assert old_rows.status_code == 422
    assert old_rows.json()["detail"][0]["loc"] == ["body", "rows", 0, "channel"]
    assert new_rows.status_code == 200
    assert paths == [SIG_PREDICT]  # replaced, not added twice


async def test_during_a_swap_the_highest_version_s_schema_is_served(gateway: Start) -> None:
    wider = SIG.model_copy(update={"columns": (*SIG.columns, Column(name="channel", type="str"))})
    fleet = FakeFleet()
    fleet.advertise("replica-b", wider, version=8)
    fleet.advertise("replica-a", SIG, version=7)  # not swapped yet
    async with gateway(fleet=fleet) as rig:
        answer = await rig.http.post(SIG_PREDICT, json={"rows": [SIG_ROW]})
    assert answer.status_code == 422  # v8's schema wants the channel
    assert answer.json()["detail"][0]["loc"] == ["body", "rows", 0, "channel"]


async def test_a_spec_s_schema_wins_over_an_advertised_one(gateway: Start) -> None:
    loose = ModelSchema(
        model_name="churn", source="signature", columns=(Column(name="x", type="float"),)
    )
    fleet = FakeFleet()
    fleet.advertise("fake-replica", loose, version=3)
    async with gateway(fleet=fleet) as rig:
        by_spec = await rig.http.post(
            "/v1/models/churn/predict", json={"rows": [{**CHURN_ROW, "tenure_months": -1}]}
        )
    assert by_spec.status_code == 422  # the spec's `ge: 0`, which the signature does not know
    assert by_spec.json()["detail"][0]["loc"] == ["body", "rows", 0, "tenure_months"]


async def test_a_malformed_advertised_schema_is_ignored_and_said_once(
    gateway: Start, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = FakeFleet()
    fleet.advertise("fake-replica", {"model_name": "broken", "columns": "nope"}, version=1)
    fleet.advertise("fake-replica", SIG, version=7)
    with caplog.at_level(logging.WARNING, logger="gateway.fleet"):
        async with gateway(fleet=fleet) as rig:
            broken = await rig.http.post("/v1/models/broken/predict", json={"rows": [{}]})
            again = await rig.http.post("/v1/models/broken/predict", json={"rows": [{}]})
            fine = await rig.http.post(SIG_PREDICT, json={"rows": [SIG_ROW]})
            paths = await rig.paths()
    assert (broken.status_code, broken.json()["error"]) == (404, "ModelNotFound")
    assert again.status_code == 404
    assert fine.status_code == 200
    assert "/v1/models/broken/predict" not in paths
    said = [r for r in caplog.records if "'broken' is malformed" in r.getMessage()]
    assert len(said) == 1


async def test_batch_scoring_checks_an_advertised_model_s_rows_by_its_schema(
    gateway: Start,
) -> None:
    async with gateway() as rig:
        rig.fleet.advertise("fake-replica", SIG, version=7)
        accepted = await rig.http.post(
            "/v1/score", json={"model_name": "fraud.v2", "rows": [SIG_ROW]}
        )
        refused = await rig.http.post(
            "/v1/score", json={"model_name": "fraud.v2", "rows": [{**SIG_ROW, "items": "x"}]}
        )
        unknown = await rig.http.post("/v1/score", json={"model_name": "nope", "rows": [{}]})
    assert accepted.status_code == 202, accepted.text
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"][:4] == ["body", "rows", 0, "items"]
    assert (unknown.status_code, unknown.json()["error"]) == (404, "ModelNotFound")
