"""The gateway's handlers over ASGI with fakes for the coalescer, the fleet, Redis and the
registry: statuses, error bodies and what is published, with no server and no Redis."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import build_app
from shared.errors import NoModelInService, PredictionFailed, PredictorTimeout
from shared.events import (
    CsvSource,
    DataArrived,
    LabelsArrived,
    ModelPromoted,
    ScoreRequested,
)
from shared.jobs import JobStatus
from shared.settings import BUNDLED_DATASETS, CommonSettings, GatewaySettings
from tests.service.gateway_fakes import FakeBus, FakeCoalescer, FakeFleet
from tests.support.data import CHURN_ROW
from tests.support.shelf import ModelShelf

pytestmark = pytest.mark.anyio
PREDICT = "/v1/models/churn/predict"
ROW = CHURN_ROW
KEY = "s3cret"


@dataclass
class Rig:
    http: httpx.AsyncClient
    coalescer: FakeCoalescer
    fleet: FakeFleet
    bus: FakeBus
    shelf: ModelShelf


@dataclass
class Parts:
    coalescer: FakeCoalescer = field(default_factory=FakeCoalescer)
    fleet: FakeFleet = field(default_factory=lambda: FakeFleet({"fake-replica": {"churn": 3}}))
    bus: FakeBus = field(default_factory=FakeBus)
    # Versions 1 and 2, 1 in production and nothing earlier: the gateway never loads them.
    shelf: ModelShelf = field(
        default_factory=lambda: ModelShelf({1: None, 2: None}, production=1, production_history=[1])
    )


Start = Callable[..., contextlib.AbstractAsyncContextManager[Rig]]


@pytest.fixture
def gateway(tmp_path: Path) -> Start:
    @contextlib.asynccontextmanager
    async def start(
        parts: Parts | None = None, raise_bugs: bool = True, **overrides: Any
    ) -> AsyncIterator[Rig]:
        parts = parts or Parts()
        common = CommonSettings(
            redis_url="redis://127.0.0.1:1/0",  # never used: every Redis part is a fake
            feature_store_root=tmp_path / "store",
            datasets_dir=BUNDLED_DATASETS,
        )
        settings = GatewaySettings(common=common, inbox=tmp_path / "inbox", **overrides)
        app = build_app(
            settings, parts.shelf, coalescer=parts.coalescer, fleet=parts.fleet, bus=parts.bus
        )
        async with app.router.lifespan_context(app):
            # raise_bugs=False: the answer a client gets to an unexpected exception.
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_bugs)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                yield Rig(http, parts.coalescer, parts.fleet, parts.bus, parts.shelf)

    return start


async def test_a_prediction_is_asked_column_by_column_and_answered_with_its_version(
    gateway: Start,
) -> None:
    async with gateway() as rig:
        answer = await rig.http.post(
            PREDICT,
            json={"rows": [ROW, {**ROW, "plan": "premium"}]},
            headers={"X-Request-Id": "r-9"},
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_version"], body["request_id"], body["predictions"]) == (3, "r-9", [1, 1])
    assert body["probabilities"] == [[0.2, 0.8], [0.2, 0.8]]
    assert answer.headers["X-Served-By"] == "fake-replica"
    ((name, columns, rows),) = rig.coalescer.asked
    assert (name, rows) == ("churn", 2)
    assert columns["plan"] == ["basic", "premium"]
    assert rig.coalescer.request_ids == ["r-9"]  # the id the prediction log is keyed by


@pytest.mark.parametrize(
    ("failure", "status", "error"),
    [
        (PredictionFailed("RuntimeError: the forest is on fire"), 502, "PredictionFailed"),
        (NoModelInService("no version of churn in service"), 503, "NoModelInService"),
        (PredictorTimeout("no predictor answered"), 504, "PredictorTimeout"),
    ],
)
async def test_what_the_predictors_answer_becomes_a_status_and_an_error_body(
    gateway: Start, failure: Exception, status: int, error: str
) -> None:
    async with gateway(Parts(coalescer=FakeCoalescer(failure=failure))) as rig:
        answer = await rig.http.post(PREDICT, json={"rows": [ROW]})
    assert answer.status_code == status
    assert answer.json() == {"error": error, "detail": str(failure)}


async def test_a_batch_that_reached_a_replica_without_the_model_is_sent_again(
    gateway: Start,
) -> None:
    # Another replica serves the model: the one that took the batch has not loaded it yet.
    missing = NoModelInService("no version of model 'churn' is in service")
    async with gateway(Parts(coalescer=FakeCoalescer(failures=[missing, missing]))) as rig:
        answer = await rig.http.post(PREDICT, json={"rows": [ROW]})
    assert answer.status_code == 200, answer.text
    assert len(rig.coalescer.asked) == 3


async def test_no_model_anywhere_is_503_at_the_first_answer(gateway: Start) -> None:
    missing = NoModelInService("no version of model 'churn' is in service")
    parts = Parts(coalescer=FakeCoalescer(failures=[missing]), fleet=FakeFleet({"r": {}}))
    async with gateway(parts) as rig:
        answer = await rig.http.post(PREDICT, json={"rows": [ROW]})
    assert answer.status_code == 503
    assert len(rig.coalescer.asked) == 1


async def test_a_bug_is_a_500_with_the_error_body_and_no_internals(gateway: Start) -> None:
    parts = Parts(coalescer=FakeCoalescer(failure=RuntimeError("secret internals")))
    async with gateway(parts, raise_bugs=False) as rig:
        answer = await rig.http.post(PREDICT, json={"rows": [ROW]})
    assert answer.status_code == 500
    assert answer.json()["error"] == "InternalError"
    assert "secret" not in answer.text


async def test_no_predictor_alive_is_503_without_asking(gateway: Start) -> None:
    async with gateway(Parts(fleet=FakeFleet())) as rig:
        answer = await rig.http.post(PREDICT, json={"rows": [ROW]})
        ready = await rig.http.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"error": "NoPredictor", "detail": "no predictor replica is running"}
    assert not rig.coalescer.asked
    assert ready.status_code == 503
    assert ready.json() == {"ready": False, "redis": True, "predictors": {}}


async def test_unknown_models_are_404_with_the_error_body(gateway: Start) -> None:
    async with gateway() as rig:
        predict = await rig.http.post("/v1/models/nope/predict", json={"rows": [ROW]})
        info = await rig.http.get("/v1/models/nope")
        score = await rig.http.post("/v1/score", json={"model_name": "nope", "rows": [ROW]})
    for answer in (predict, info, score):
        assert answer.status_code == 404
        assert answer.json()["error"] == "ModelNotFound"


async def test_unknown_paths_and_methods_get_the_error_body_too(gateway: Start) -> None:
    async with gateway() as rig:
        path = await rig.http.get("/v2/nothing")
        method = await rig.http.delete("/v1/score")
    assert (path.status_code, path.json()["error"]) == (404, "NotFound")
    assert (method.status_code, method.json()["error"]) == (405, "MethodNotAllowed")


async def test_a_body_over_the_limit_is_413_from_the_same_table(gateway: Start) -> None:
    async with gateway(max_body_bytes=2048) as rig:
        answer = await rig.http.post(PREDICT, json={"rows": [ROW], "pad": "x" * 4000})
    assert answer.status_code == 413
    assert answer.json()["error"] == "PayloadTooLarge"


async def test_promotion_moves_production_and_announces_it(gateway: Start) -> None:
    async with gateway() as rig:
        moved = await rig.http.post("/v1/models/churn/promote", json={"version": 2})
        missing = await rig.http.post("/v1/models/churn/promote", json={"version": 9})
        info = await rig.http.get("/v1/models/churn")
    assert moved.status_code == 200, moved.text
    assert (moved.json()["version"], moved.json()["previous_version"]) == (2, 1)
    assert rig.shelf.production == 2
    (event,) = rig.bus.published
    assert isinstance(event, ModelPromoted)
    assert (event.version, event.reason) == (2, "manual")
    assert missing.status_code == 404
    assert info.json()["aliases"] == {"production": 2}
    assert info.json()["serving"] == {"fake-replica": 3}
    assert info.json()["input"]["source"] == "spec"
    assert "tenure_months" in [c["name"] for c in info.json()["input"]["columns"]]


async def test_shadow_sets_the_challenger_announces_it_and_ends(gateway: Start) -> None:
    async with gateway() as rig:
        itself = await rig.http.post("/v1/models/churn/shadow", json={"version": 1})
        wide = await rig.http.post("/v1/models/churn/shadow", json={"version": 2, "sample": 2})
        missing = await rig.http.post("/v1/models/churn/shadow", json={"version": 9})
        set_ = await rig.http.post("/v1/models/churn/shadow", json={"version": 2, "sample": 0.25})
        info = await rig.http.get("/v1/models/churn")
        ended = await rig.http.delete("/v1/models/churn/shadow")
    assert (itself.status_code, itself.json()["error"]) == (409, "InvalidShadow")
    assert wide.status_code == 422
    assert missing.status_code == 404
    assert set_.status_code == 200, set_.text
    assert (set_.json()["version"], set_.json()["alias"]) == (2, "challenger")
    (event,) = rig.bus.published
    assert isinstance(event, ModelPromoted)
    assert (event.alias, event.version, event.reason) == ("challenger", 2, "manual")
    assert info.json()["aliases"] == {"production": 1, "challenger": 2}
    assert ended.status_code == 204
    assert rig.shelf.challenger is None
    assert rig.shelf.production == 1


async def test_canary_is_set_routed_by_key_and_withdrawn(gateway: Start) -> None:
    """The route sets the alias and announces it; once the fleet agrees on the canary, a
    request goes to it when its routing key falls in its share, the same key always the same
    way, and X-Model-Version says who answered; DELETE withdraws it and says so."""
    from gateway.canary import position

    async with gateway() as rig:
        itself = await rig.http.post("/v1/models/churn/canary", json={"version": 1})
        wide = await rig.http.post("/v1/models/churn/canary", json={"version": 2, "percent": 101})
        missing = await rig.http.post("/v1/models/churn/canary", json={"version": 9})
        set_ = await rig.http.post("/v1/models/churn/canary", json={"version": 2, "percent": 30})
        info = await rig.http.get("/v1/models/churn")
        rig.fleet.canaries["churn"] = (2, 0.3)
        keys = [f"client-{i}" for i in range(40)]
        answers = [
            await rig.http.post(PREDICT, json={"rows": [ROW]}, headers={"X-Routing-Key": key})
            for key in keys * 2
        ]
        ended = await rig.http.delete("/v1/models/churn/canary")
    assert (itself.status_code, itself.json()["error"]) == (409, "InvalidCanary")
    assert wide.status_code == 422
    assert missing.status_code == 404
    assert (set_.json()["version"], set_.json()["alias"]) == (2, "canary")
    assert info.json()["aliases"] == {"production": 1, "canary": 2}
    said = [int(a.headers["X-Model-Version"]) for a in answers]
    expected = [2 if position(key) < 0.3 else 3 for key in keys]  # the fake's production: 3
    assert said == expected * 2
    assert set(said) == {2, 3}
    assert rig.coalescer.targets == [2 if v == 2 else None for v in said]
    assert ended.status_code == 204
    set_event, withdrawn = [e for e in rig.bus.published if isinstance(e, ModelPromoted)]
    assert (set_event.alias, set_event.version, set_event.withdrawn) == ("canary", 2, False)
    assert (withdrawn.alias, withdrawn.version, withdrawn.withdrawn) == ("canary", 2, True)
    assert rig.shelf.canary is None


async def test_rollback_goes_back_once_then_has_nothing_to_roll_back(gateway: Start) -> None:
    parts = Parts()
    parts.shelf.production, parts.shelf.production_history = 2, [1, 2]
    async with gateway(parts) as rig:
        back = await rig.http.post("/v1/models/churn/rollback")
        again = await rig.http.post("/v1/models/churn/rollback")
    assert back.status_code == 200, back.text
    assert (back.json()["version"], back.json()["reason"]) == (1, "rollback")
    assert again.status_code == 409
    assert again.json()["error"] == "NothingToRollBack"
    assert [e.version for e in rig.bus.published if isinstance(e, ModelPromoted)] == [1]


async def test_mutating_endpoints_need_the_key_when_one_is_set(gateway: Start) -> None:
    async with gateway(api_key=KEY) as rig:
        calls = [
            ("/v1/models/churn/promote", {"version": 2}),
            ("/v1/models/churn/rollback", None),
            ("/v1/models/churn/shadow", {"version": 2}),
            ("/v1/datasets/churn/ingest", {"source": "churn/churn.csv"}),
            ("/v1/models/churn/feedback", {"labels": [{"request_id": "r", "label": 1}]}),
            ("/v1/score", {"model_name": "churn", "rows": [ROW]}),
        ]
        refused = [await rig.http.post(path, json=body) for path, body in calls]
        wrong = await rig.http.post(calls[0][0], json=calls[0][1], headers={"X-API-Key": "no"})
        bearer = {"Authorization": f"Bearer {KEY}"}
        allowed = await rig.http.post(calls[-1][0], json=calls[-1][1], headers=bearer)
        reading = await rig.http.post(PREDICT, json={"rows": [ROW]})
    for answer in [*refused, wrong]:
        assert answer.status_code == 401
        assert answer.json()["error"] == "Unauthorized"
        assert answer.headers["WWW-Authenticate"] == "ApiKey"
    assert allowed.status_code == 202
    assert reading.status_code == 200  # predictions do not need the key
    assert [type(e) for e in rig.bus.published] == [ScoreRequested]


async def test_ingest_saves_an_upload_or_names_a_source(gateway: Start, tmp_path: Path) -> None:
    csv = b"customer_id,tenure_months\nc-1,3\n"
    async with gateway() as rig:
        upload = await rig.http.post(
            "/v1/datasets/churn/ingest", content=csv, headers={"Content-Type": "text/csv"}
        )
        named = await rig.http.post(
            "/v1/datasets/churn/ingest", json={"source": {"kind": "csv", "uri": "churn.csv"}}
        )
        bad = await rig.http.post("/v1/datasets/churn/ingest", json={"source": {"kind": "ftp"}})
        unknown = await rig.http.post("/v1/datasets/nope/ingest", json={"source": "x.csv"})
    assert (upload.status_code, named.status_code) == (202, 202), upload.text
    assert bad.status_code == 422
    assert "detail" in bad.json()  # FastAPI's validation shape, which clients know
    assert (unknown.status_code, unknown.json()["error"]) == (404, "UnknownDataset")
    first, second = rig.bus.published
    assert isinstance(first, DataArrived)
    assert isinstance(second, DataArrived)
    assert str(first.event_id) == upload.json()["event_id"]
    assert isinstance(first.source, CsvSource)
    saved = Path(first.source.uri)
    assert saved.parent == tmp_path / "inbox" / "churn"
    assert saved.read_bytes() == csv
    assert second.source == CsvSource(uri="churn.csv")


async def test_labels_are_published_for_the_joiners_and_bad_ones_refused(gateway: Start) -> None:
    labels = [{"request_id": "r-1", "label": 1}, {"request_id": "r-2", "row": 3, "label": "yes"}]
    async with gateway() as rig:
        sent = await rig.http.post("/v1/models/churn/feedback", json={"labels": labels})
        empty = await rig.http.post("/v1/models/churn/feedback", json={"labels": []})
        no_id = await rig.http.post("/v1/models/churn/feedback", json={"labels": [{"label": 1}]})
        listed = await rig.http.post(
            "/v1/models/churn/feedback", json={"labels": [{"request_id": "r", "label": [1]}]}
        )
    assert sent.status_code == 202, sent.text
    assert sent.json()["stream"] == "labels-arrived"
    (event,) = rig.bus.published
    assert isinstance(event, LabelsArrived)
    assert event.model_name == "churn"
    assert [(x.request_id, x.row, x.label) for x in event.labels] == [
        ("r-1", 0, 1),
        ("r-2", 3, "yes"),
    ]
    assert [a.status_code for a in (empty, no_id, listed)] == [422, 422, 422]
    assert no_id.json()["detail"][0]["loc"] == ["body", "labels", 0, "request_id"]


async def test_a_score_job_is_submitted_and_its_status_read(gateway: Start) -> None:
    status = JobStatus(
        job_id="job-1", status="running", model_name="churn", updated_at=datetime.now(UTC)
    )
    async with gateway(Parts(bus=FakeBus(jobs={"job-1": status}))) as rig:
        accepted = await rig.http.post(
            "/v1/score", json={"model_name": "churn", "job_id": "job-1", "rows": [ROW, ROW]}
        )
        bad_row = await rig.http.post(
            "/v1/score", json={"model_name": "churn", "rows": [{**ROW, "plan": "gold"}]}
        )
        known = await rig.http.get("/v1/score/job-1")
        unknown = await rig.http.get("/v1/score/no-such-job")
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status_url"] == "/v1/score/job-1"
    (event,) = rig.bus.published
    assert isinstance(event, ScoreRequested)
    assert (event.job_id, len(event.rows or ())) == ("job-1", 2)
    assert bad_row.status_code == 422
    assert bad_row.json()["detail"][0]["loc"][:4] == ["body", "rows", 0, "plan"]
    assert (known.status_code, known.json()["status"]) == (200, "running")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "JobNotFound")


async def test_each_operation_declares_exactly_its_error_answers(gateway: Start) -> None:
    async with gateway() as rig:
        document = (await rig.http.get("/openapi.json")).json()
    declared = {
        f"{method.upper()} {path}": set(operation["responses"])
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    # One predict operation per model a spec in the datasets dir trains: all alike.
    predicts = {op for op in declared if op.startswith("POST /v1/models/") and "{" not in op}
    assert "POST /v1/models/churn/predict" in predicts
    for op in predicts:
        assert declared.pop(op) == {"200", "400", "413", "422", "502", "503", "504"}, op
    assert declared == {
        "GET /healthz": {"200"},
        "GET /readyz": {"200", "503"},
        "GET /v1/models/{model_name}": {"200", "404", "422"},
        "POST /v1/models/{model_name}/promote": {"200", "400", "401", "404", "413", "422", "503"},
        "POST /v1/models/{model_name}/rollback": {"200", "401", "404", "409", "422", "503"},
        "POST /v1/models/{model_name}/shadow": {
            *("200", "400", "401", "404", "409", "413", "422", "503"),
        },
        "DELETE /v1/models/{model_name}/shadow": {"204", "401", "404", "422"},
        "POST /v1/models/{model_name}/canary": {
            *("200", "400", "401", "404", "409", "413", "422", "503"),
        },
        "DELETE /v1/models/{model_name}/canary": {"204", "401", "404", "422", "503"},
        "POST /v1/datasets/{dataset}/ingest": {"202", "401", "404", "413", "422", "503"},
        "POST /v1/score": {"202", "400", "401", "404", "413", "422", "503"},
        "POST /v1/models/{model_name}/feedback": {"202", "400", "401", "422", "503"},
        "GET /v1/score/{job_id}": {"200", "404", "422", "503"},
    }
    rollback = document["paths"]["/v1/models/{model_name}/rollback"]["post"]["responses"]
    body = rollback["409"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ErrorBody"}
    assert set(document["components"]["schemas"]["ErrorBody"]["required"]) == {"error", "detail"}
