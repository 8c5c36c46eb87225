"""Retraining on drift, with every service a process of its own: v1 trained and promoted from
an upload, then live traffic with one feature shifted beyond the spec's threshold. Exactly one
`retrain-requested` (reason drift) follows within the rule's window, none more while the
cooldown lasts, and the trainer trains and gates a new version for it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import BUNDLED_DATASETS
from streamops.stack import Running, Stack, bring_up
from tests.support.data import write_churn_spec
from tests.support.models import churn_features
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e
RULE = {"drift_psi": 0.25, "drift_minutes": 1, "drift_min_rows": 200, "cooldown_minutes": 60}


def _events(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    entries: Any = client.xrange(stream)
    return [json.loads(fields[b"__data__"]) for _, fields in entries]


def _checks(running: Running) -> float:
    text = httpx.get(running.metrics["trainer"], timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "streamops_retrain_checks_total":
                return sample.value
    return 0.0


@pytest.fixture
def world(
    tmp_path: Path, redis_url: str, mlflow_url: str
) -> Iterator[tuple[Running, redis.Redis, str]]:
    model = write_churn_spec(tmp_path / "datasets", "churn-drift", training={"retrain": RULE})
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    env = {
        "STREAMOPS_REDIS_URL": redis_url,
        "STREAMOPS_MLFLOW_TRACKING_URI": mlflow_url,
        "STREAMOPS_DATASETS_DIR": str(tmp_path / "datasets"),
        "STREAMOPS_PREDICTOR_MODELS": model,
        "STREAMOPS_TRAINER_RETRAIN_CHECK_S": "1",
        "STREAMOPS_INGESTOR_LOG_FLUSH_S": "0.5",
    }
    stack = Stack(tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)  # the services' environment (bring_up passes it on)
        try:
            running = bring_up(stack, ("ingestor", "trainer", "predictor", "gateway"))
            yield running, client, model
        finally:
            stack.stop()
            client.close()


def test_drift_requests_one_retrain_and_a_new_version_is_trained_and_gated(
    world: tuple[Running, redis.Redis, str],
) -> None:
    running, client, model = world
    assert running.gateway_url is not None
    with httpx.Client(base_url=running.gateway_url, timeout=30) as http:
        csv = (BUNDLED_DATASETS / "churn" / "churn.csv").read_bytes()
        sent = http.post("/v1/datasets/churn/ingest", content=csv,
                         headers={"Content-Type": "text/csv"})  # fmt: skip
        assert sent.status_code == 202, sent.text
        wait_until(lambda: _events(client, "model-promoted"), timeout=240, what="v1 promoted")
        wait_until(lambda: http.get("/readyz").status_code == 200, timeout=60, what="serving v1")

        path = f"/v1/models/{model}/predict"
        # Realistic rows, with tenure_months alone moved beyond what training saw.
        frame = churn_features(500, seed=5).drop(columns=["churned"])
        frame["tenure_months"] = 200 + frame["tenure_months"] % 40
        shifted = json.loads(frame.to_json(orient="records"))  # NaN as null
        began = time.monotonic()
        for start in range(0, 400, 20):
            answer = http.post(path, json={"rows": shifted[start : start + 20]})
            assert answer.status_code == 200, answer.text

        requests = wait_until(lambda: _events(client, "retrain-requested"), timeout=90,
                              what="retrain-requested after the shift")  # fmt: skip
        waited = time.monotonic() - began
        (request,) = requests
        assert (request["model_name"], request["reason"], request["version"]) == (model, "drift", 1)
        assert request["evidence"]["tenure_months"] > 0.25
        assert set(request["evidence"]) == {"tenure_months", "rows"}  # only what moved
        assert waited < RULE["drift_minutes"] * 60 + 30  # within the rule's window (and a pass)

        # The shift goes on; the watcher passes again and again; the cooldown holds.
        for start in range(400, 500, 20):
            answer = http.post(path, json={"rows": shifted[start : start + 20]})
            assert answer.status_code == 200
        seen = _checks(running)
        wait_until(lambda: _checks(running) >= seen + 3, timeout=30, what="three more passes")
        assert len(_events(client, "retrain-requested")) == 1

        def retrained() -> list[dict[str, Any]]:
            trained = _events(client, "model-trained")
            return [t for t in trained if t["correlation_id"] == request["correlation_id"]]

        (trained,) = wait_until(retrained, timeout=180, what="the retrained version")
    assert trained["model_version"] == 2
    assert isinstance(trained["gate_passed"], bool)  # judged by the usual gate
