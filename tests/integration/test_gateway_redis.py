"""The gateway and a predictor replica in this process, talking over a real Redis: coalesced
predictions, every error status, auth, ingest, batch submission, readiness, OpenAPI.

The registry is the in-memory shelf (the MLflow side of loading is tested in
test_predictor_redis.py and the e2e tests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import redis.asyncio as aioredis

from gateway.app import build_app as build_gateway
from predictor.app import build_app as build_predictor
from predictor.cache import ModelCache
from predictor.drift import DriftMonitor
from predictor.metrics import PredictorMetrics
from shared.datasets import DatasetSpec, feature_frame
from shared.drift import reference_from
from shared.settings import BUNDLED_DATASETS, CommonSettings, GatewaySettings, PredictorSettings
from streamops.stack import free_port
from tests.support.data import CHURN_ROW
from tests.support.shelf import ModelShelf, churn_frame
from tests.support.streams import entries, running
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
PREDICT = "/v1/models/churn/predict"
ROW = CHURN_ROW


Gateway = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def gateway(common: CommonSettings, shelf: ModelShelf, tmp_path: Path) -> Gateway:
    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = GatewaySettings(common=common, inbox=tmp_path / "inbox", **overrides)
        app = build_gateway(settings, registry=shelf)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                yield client

    return start


@contextlib.asynccontextmanager
async def replica(
    common: CommonSettings, shelf: ModelShelf, metrics: PredictorMetrics | None = None
) -> AsyncIterator[ModelCache]:
    cache = ModelCache()
    settings = PredictorSettings(common=common, converge_s=3600)
    app = build_predictor(settings, cache=cache, registry=shelf, metrics=metrics)
    async with running(app):
        yield cache


async def test_predictions_match_the_model_and_concurrent_requests_share_batches(
    common: CommonSettings, shelf: ModelShelf, gateway: Gateway, churn_spec: DatasetSpec
) -> None:
    rows = [{**ROW, "tenure_months": i, "monthly_charges": 20.0 + i} for i in range(40)]
    expected = shelf.models[1].predict_proba(feature_frame(churn_spec, pd.DataFrame(rows)))
    async with replica(common, shelf), gateway(batch_wait_ms=20) as http:
        one = await http.post(PREDICT, json={"rows": [ROW, ROW]}, headers={"X-Request-Id": "r-1"})
        assert one.status_code == 200, one.text
        body = one.json()
        assert body["model_name"] == "churn"
        assert body["model_version"] == 1
        assert one.headers["X-Model-Version"] == "1"
        assert one.headers["X-Request-Id"] == body["request_id"] == "r-1"
        assert body["classes"] == [0, 1]
        assert len(body["predictions"]) == 2
        assert sum(body["probabilities"][0]) == pytest.approx(1.0)

        client = aioredis.Redis.from_url(common.redis_url)
        before = await client.xlen("predict-requests")
        answers = await asyncio.gather(*(http.post(PREDICT, json={"rows": [r]}) for r in rows))
        batches = await client.xlen("predict-requests") - before
        await client.aclose()

    assert all(a.status_code == 200 for a in answers)
    got = [a.json()["probabilities"][0][1] for a in answers]
    assert got == pytest.approx(expected[:, 1].tolist())  # each request got its own row's answer
    assert [a.json()["predictions"][0] for a in answers] == expected.argmax(axis=1).tolist()
    assert batches < len(rows)  # coalesced


async def test_bad_requests_get_precise_statuses(
    common: CommonSettings, shelf: ModelShelf, gateway: Gateway
) -> None:
    async with replica(common, shelf), gateway(max_rows_per_request=5, max_body_bytes=4096) as http:
        bad = await http.post(PREDICT, json={"rows": [{**ROW, "tenure_months": -1}]})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "rows", 0, "tenure_months"]
        missing = await http.post(PREDICT, json={"rows": [{"plan": "basic"}]})
        assert missing.status_code == 422
        assert {"tenure_months", "usage_gb"} <= {e["loc"][-1] for e in missing.json()["detail"]}
        assert (await http.post(PREDICT, json={"rows": []})).status_code == 422
        assert (await http.post(PREDICT, content=b"{not json")).status_code == 422
        unknown = await http.post("/v1/models/nope/predict", json={"rows": [ROW]})
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "ModelNotFound"
        many = await http.post(PREDICT, json={"rows": [ROW] * 6})
        assert many.status_code == 413
        huge = await http.post(PREDICT, json={"rows": [ROW], "pad": "x" * 5000})
        assert huge.status_code == 413

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 1000

        streamed = await http.post(PREDICT, content=chunked())
        assert streamed.status_code == 413
        extra = await http.post(PREDICT, json={"rows": [{**ROW, "customer_id": "c-1"}]})
        assert extra.status_code == 200  # whole records are fine: non-features are ignored


async def test_no_predictor_is_503_and_a_silent_one_is_504(
    common: CommonSettings, gateway: Gateway
) -> None:
    async with gateway(predict_timeout_s=0.3) as http:
        none = await http.post(PREDICT, json={"rows": [ROW]})
        assert none.status_code == 503
        assert none.json()["error"] == "NoPredictor"
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert (await http.get("/healthz")).status_code == 200

        # A replica that beats but never answers (wedged): the request times out.
        client = aioredis.Redis.from_url(common.redis_url)
        await client.set("streamops:heartbeat:{predictor}:wedged", json.dumps({"models": {}}))
        await client.aclose()
        app_fleet_refresh = await http.get("/readyz")  # refreshes the gateway's view
        assert app_fleet_refresh.json()["predictors"] == {}
        slow = await http.post(PREDICT, json={"rows": [ROW]})
        assert slow.status_code == 504
        assert slow.json()["error"] == "PredictorTimeout"


class Flaky:
    """A pipeline that warms up and serves, but fails on customers of 200 months or more."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.classes_ = pipeline.classes_

    def predict(self, frame: pd.DataFrame) -> Any:
        return self.pipeline.predict(self._checked(frame))

    def predict_proba(self, frame: pd.DataFrame) -> Any:
        return self.pipeline.predict_proba(self._checked(frame))

    def _checked(self, frame: pd.DataFrame) -> pd.DataFrame:
        if (frame["tenure_months"] >= 200).any():
            raise RuntimeError("the forest is on fire")
        return frame


async def test_a_predictor_that_fails_is_502_with_the_error_body(
    common: CommonSettings, pipelines: tuple[Any, Any], gateway: Gateway
) -> None:
    shelf = ModelShelf(models={1: Flaky(pipelines[0])}, production=1)
    async with replica(common, shelf), gateway() as http:
        fine = await http.post(PREDICT, json={"rows": [ROW]})
        failed = await http.post(PREDICT, json={"rows": [{**ROW, "tenure_months": 220}]})
    assert fine.status_code == 200, fine.text
    assert failed.status_code == 502
    assert failed.json() == {
        "error": "PredictionFailed",
        "detail": "RuntimeError: the forest is on fire",
    }


async def test_nothing_in_service_is_503(common: CommonSettings, gateway: Gateway) -> None:
    async with replica(common, ModelShelf()), gateway() as http:
        answer = await http.post(PREDICT, json={"rows": [ROW]})
        assert answer.status_code == 503
        assert answer.json()["error"] == "NoModelInService"
        assert (await http.get("/readyz")).status_code == 503


async def test_ready_once_a_replica_serves(
    common: CommonSettings, shelf: ModelShelf, gateway: Gateway
) -> None:
    async with replica(common, shelf), gateway() as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["predictors"] == {"replica-a": {"churn": 1}}


async def test_promotion_needs_the_key_and_is_served_without_restart(
    common: CommonSettings, shelf: ModelShelf, gateway: Gateway
) -> None:
    key = {"X-API-Key": "s3cret"}
    async with replica(common, shelf) as cache, gateway(api_key="s3cret") as http:
        promote = "/v1/models/churn/promote"
        assert (await http.post(promote, json={"version": 2})).status_code == 401
        wrong = await http.post(promote, json={"version": 2}, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
        missing = await http.post(promote, json={"version": 9}, headers=key)
        assert missing.status_code == 404
        done = await http.post(promote, json={"version": 2}, headers=key)
        assert done.status_code == 200, done.text
        assert done.json()["previous_version"] == 1

        async def serving_2() -> bool:
            return cache.version("churn") == 2

        await eventually(serving_2, timeout=10, what="v2 in service")
        answer = await http.post(PREDICT, json={"rows": [ROW]})
        assert answer.headers["X-Model-Version"] == "2"

        bearer = {"Authorization": "Bearer s3cret"}
        back = await http.post("/v1/models/churn/rollback", headers=bearer)
        assert back.status_code == 200, back.text
        assert back.json()["version"] == 1
        again = await http.post("/v1/models/churn/rollback", headers=bearer)
        assert again.status_code == 409  # nothing earlier than v1

        info = await http.get("/v1/models/churn")
        assert info.status_code == 200
        assert info.json()["aliases"] == {"production": 1}
        assert [v["version"] for v in info.json()["versions"]] == [1, 2]
        assert (await http.get("/v1/models/nope")).status_code == 404


async def test_ingest_by_upload_or_by_source(
    common: CommonSettings, gateway: Gateway, tmp_path: Path
) -> None:
    csv = (BUNDLED_DATASETS / "churn" / "churn.csv").read_bytes()[:5000]
    async with gateway() as http:
        upload = await http.post(
            "/v1/datasets/churn/ingest", content=csv, headers={"Content-Type": "text/csv"}
        )
        assert upload.status_code == 202, upload.text
        named = await http.post(
            "/v1/datasets/churn/ingest", json={"source": {"kind": "csv", "uri": "/data/x.csv"}}
        )
        assert named.status_code == 202
        bad = await http.post("/v1/datasets/churn/ingest", json={"source": {"kind": "ftp"}})
        assert bad.status_code == 422
        unknown = await http.post("/v1/datasets/nope/ingest", json={"source": "x"})
        assert unknown.status_code == 404
    client = aioredis.Redis.from_url(common.redis_url)
    arrived = await entries(client, "data-arrived")
    await client.aclose()
    assert [e["event_id"] for e in arrived] == [upload.json()["event_id"], named.json()["event_id"]]
    saved = Path(arrived[0]["source"]["uri"])
    assert saved.parent == tmp_path / "inbox" / "churn"
    assert saved.read_bytes() == csv
    assert arrived[1]["source"]["uri"] == "/data/x.csv"


async def test_score_jobs_are_submitted_and_checked(
    common: CommonSettings, gateway: Gateway
) -> None:
    async with gateway() as http:
        accepted = await http.post(
            "/v1/score", json={"model_name": "churn", "job_id": "job-1", "rows": [ROW, ROW]}
        )
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["status_url"] == "/v1/score/job-1"
        bad_row = await http.post(
            "/v1/score", json={"model_name": "churn", "rows": [{**ROW, "plan": "gold"}]}
        )
        assert bad_row.status_code == 422
        assert bad_row.json()["detail"][0]["loc"][:4] == ["body", "rows", 0, "plan"]
        both = await http.post(
            "/v1/score",
            json={"model_name": "churn", "rows": [ROW], "input": {"kind": "parquet", "uri": "x"}},
        )
        assert both.status_code == 422
        assert (await http.get("/v1/score/no-such-job")).status_code == 404
    client = aioredis.Redis.from_url(common.redis_url)
    (requested,) = await entries(client, "score-requested")
    await client.aclose()
    assert requested["job_id"] == "job-1"
    assert len(requested["rows"]) == 2


async def test_the_openapi_document_shows_the_real_features(gateway: Gateway) -> None:
    async with gateway() as http:
        document = (await http.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    row = schemas["churn_features"]
    assert set(row["required"]) == {
        "tenure_months",
        "monthly_charges",
        "support_calls",
        "usage_gb",
        "plan",
        "autopay",
    }  # satisfaction is nullable, so optional
    assert row["properties"]["tenure_months"]["minimum"] == 0
    assert "/v1/models/churn/predict" in document["paths"]
    assert "X-API-Key" in json.dumps(document["components"]["securitySchemes"])


async def test_the_predictor_exports_what_it_does(
    common: CommonSettings, shelf: ModelShelf, gateway: Gateway
) -> None:
    shelf.models[3] = OSError("artifact is corrupt")
    port = free_port()
    metrics = PredictorMetrics()
    exporting = common.model_copy(update={"metrics_port": port})
    async with replica(exporting, shelf, metrics) as cache, gateway() as http:
        for _ in range(3):
            assert (await http.post(PREDICT, json={"rows": [ROW, ROW]})).status_code == 200
        for version in (2, 3):
            answer = await http.post("/v1/models/churn/promote", json={"version": version})
            assert answer.status_code == 200

        def refused() -> float | None:
            labels = {"model": "churn", "trigger": "promotion", "outcome": "refused"}
            return metrics.registry.get_sample_value("streamops_model_loads_total", labels)

        async def refusal_counted() -> bool:
            return refused() == 1.0

        await eventually(refusal_counted, timeout=10, what="the refusal counted")
        assert cache.version("churn") == 2
        async with httpx.AsyncClient() as scraper:
            text = (await scraper.get(f"http://127.0.0.1:{port}/metrics")).text

    value = metrics.registry.get_sample_value
    assert value("streamops_predicted_rows_total", {"model": "churn", "path": "online"}) == 6
    assert value("streamops_predict_batches_total", {"model": "churn", "outcome": "ok"}) == 3
    assert value("streamops_model_version_in_service", {"model": "churn"}) == 2
    loaded = {"model": "churn", "trigger": "start", "outcome": "loaded"}
    assert value("streamops_model_loads_total", loaded) == 1
    assert value("streamops_model_load_seconds_count", {"model": "churn"}) == 2
    assert 'streamops_model_version_in_service{model="churn"} 2.0' in text
    assert "faststream_received_messages_total" in text  # broker traffic, by FastStream


async def test_the_gateway_exports_requests_and_predictions(
    common: CommonSettings, shelf: ModelShelf, gateway: Gateway
) -> None:
    async with replica(common, shelf), gateway() as http:
        for _ in range(3):
            assert (await http.post(PREDICT, json={"rows": [ROW, ROW]})).status_code == 200
        assert (await http.post(PREDICT, json={"rows": []})).status_code == 422
        assert (await http.get("/v1/score/some-job")).status_code == 404
        text = (await http.get("/metrics")).text
    predict = 'route="/v1/models/churn/predict"'
    assert f'streamops_http_requests_total{{method="POST",{predict},status="200"}} 3.0' in text
    assert f'streamops_http_requests_total{{method="POST",{predict},status="422"}} 1.0' in text
    # One series for every job id: the route's template, not the path.
    assert 'route="/v1/score/{job_id}",status="404"} 1.0' in text
    assert f'streamops_http_request_seconds_count{{method="POST",{predict}}} 4.0' in text
    counted = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('streamops_predicted_class_total{label="')
    ]
    assert sum(counted) == 6  # every predicted row, whatever its class
    assert 'streamops_prediction_probability_count{model="churn",version="1"} 6.0' in text


async def test_the_streams_health_is_scraped_from_redis(
    common: CommonSettings, gateway: Gateway
) -> None:
    client = aioredis.Redis.from_url(common.redis_url)
    for n in range(3):
        await client.xadd("data-arrived", {"__data__": f'{{"n": {n}}}'})
    await client.xgroup_create("data-arrived", "ingestor", id="0")
    await client.xreadgroup("ingestor", "c1", {"data-arrived": ">"}, count=1)
    await client.xadd("{data-arrived}.dlq", {"__data__": "{}"})
    await client.aclose()
    async with gateway() as http:
        text = (await http.get("/metrics")).text
    assert 'streamops_stream_length{stream="data-arrived"} 3.0' in text
    assert 'streamops_stream_group_pending{group="ingestor",stream="data-arrived"} 1.0' in text
    assert 'streamops_stream_group_lag{group="ingestor",stream="data-arrived"} 2.0' in text
    assert 'streamops_dead_letters{stream="data-arrived"} 1.0' in text
    assert 'stream="model-trained"' not in text  # streams that do not exist are left out


def payload(frame: pd.DataFrame) -> dict[str, Any]:
    features = frame.drop(columns=["customer_id", "churned"], errors="ignore")
    records = json.loads(features.to_json(orient="records"))  # NaN as null
    return {"rows": records}


async def test_the_predictor_exports_drift_of_the_rows_it_serves(
    common: CommonSettings, shelf: ModelShelf, gateway: Gateway, churn_spec: DatasetSpec
) -> None:
    training = feature_frame(churn_spec, churn_frame(600, seed=4))  # what v1 was fitted on
    shelf.references[1] = reference_from(churn_spec, training).model_dump(mode="json")
    port = free_port()
    metrics = PredictorMetrics(drift=DriftMonitor(window=400, min_rows=200))
    exporting = common.model_copy(update={"metrics_port": port})

    async def scrape() -> dict[str, float]:
        async with httpx.AsyncClient() as scraper:
            text = (await scraper.get(f"http://127.0.0.1:{port}/metrics")).text
        prefix = 'streamops_feature_psi{feature="'
        return {
            line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(prefix) and 'model="churn",version="1"' in line
        }

    async with replica(exporting, shelf, metrics), gateway() as http:
        live = churn_frame(400, seed=11)
        for start in range(0, 400, 100):
            answer = await http.post(PREDICT, json=payload(live.iloc[start : start + 100]))
            assert answer.status_code == 200, answer.text
        calm = await scrape()
        assert set(calm) == {c.name for c in churn_spec.feature_columns}
        assert max(calm.values()) < 0.25, calm
        # The same customers, all long-standing now: one feature moved, the others did not.
        moved = live.assign(tenure_months=70)
        for start in range(0, 400, 100):
            answer = await http.post(PREDICT, json=payload(moved.iloc[start : start + 100]))
            assert answer.status_code == 200, answer.text
        drifted = await scrape()
    assert drifted["tenure_months"] > 1.0
    assert drifted["monthly_charges"] == pytest.approx(calm["monthly_charges"])
