"""The four services as processes with the feature store and MLflow's artifacts on an S3 API
(moto's server, as `streamops up --s3` runs it): a CSV uploaded to the gateway is ingested as a
version committed on S3, trained with its model's artifacts written to S3, served over HTTP
(the predictor downloads the model from there, through MLflow), and scored in batch from the
feature store and from a Parquet object, each result an object beside its input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import redis

from shared import storage
from shared.settings import BUNDLED_DATASETS
from streamops.stack import FROM_UP, S3_BUCKET, Running, Stack, bring_up
from tests.conftest import forget_s3_clients
from tests.support.data import CHURN_ROW, write_churn_spec
from tests.support.models import churn_features
from tests.support.scoring import scored
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.s3]


@dataclass
class World:
    running: Running
    redis: redis.Redis
    http: httpx.Client
    model: str

    def events(self, stream: str) -> list[dict[str, Any]]:
        entries: Any = self.redis.xrange(stream)
        return [json.loads(fields[b"__data__"]) for _, fields in entries]

    def scored(self, source: dict[str, Any]) -> Any:
        return scored(self.http, self.model, source)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("s3-e2e")
    model = write_churn_spec(workdir / "datasets", "churn-s3", rollout={"guard": False})
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    env = {
        "STREAMOPS_REDIS_URL": redis_url,
        "STREAMOPS_DATASETS_DIR": str(workdir / "datasets"),
        "STREAMOPS_PREDICTOR_MODELS": model,
        "STREAMOPS_PREDICTOR_SCORE_CHUNK_ROWS": "400",
    }
    stack = Stack(workdir)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)  # the services' environment (bring_up passes it on)
        # up's own MLflow, with its artifacts on S3 (mlflow.set_tracking_uri, run by the
        # session's fixture, exports MLFLOW_TRACKING_URI: bring_up would take that server).
        for name in ("STREAMOPS_FEATURE_STORE_URI", "STREAMOPS_MLFLOW_TRACKING_URI",
                     "MLFLOW_TRACKING_URI"):  # fmt: skip
            patch.delenv(name, raising=False)
        try:
            services = ("ingestor", "trainer", "predictor", "gateway")
            running = bring_up(stack, services, object_store=True)
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                         "AWS_ENDPOINT_URL_S3"):  # fmt: skip
                patch.setenv(name, running.env[name])  # this process reads S3 too
            forget_s3_clients()
            assert running.gateway_url is not None
            with httpx.Client(base_url=running.gateway_url, timeout=30) as http:
                yield World(running, client, http, model)
        finally:
            stack.stop()
            client.close()
            forget_s3_clients()


def test_ingest_train_serve_and_score_with_everything_on_s3(world: World) -> None:
    store = world.running.env["STREAMOPS_FEATURE_STORE_URI"]
    assert store == f"s3://{S3_BUCKET}/feature-store"
    assert world.running.origin["STREAMOPS_MLFLOW_TRACKING_URI"] == FROM_UP
    csv = (BUNDLED_DATASETS / "churn" / "churn.csv").read_bytes()
    sent = world.http.post("/v1/datasets/churn/ingest", content=csv,
                           headers={"Content-Type": "text/csv"})  # fmt: skip
    assert sent.status_code == 202, sent.text
    (ingested,) = wait_until(lambda: world.events("data-ingested"), timeout=60, what="ingested")
    assert ingested["path"].startswith(f"{store}/churn/objects/")
    assert storage.exists(storage.join(store, "churn", "versions", "version=1", "_version.json"))
    wait_until(lambda: world.events("model-promoted"), timeout=240, what="v1 promoted")

    # The model's artifacts are objects in the bucket (MLflow's artifact store is S3).
    artifacts = storage.files_under(f"s3://{S3_BUCKET}/mlflow")
    assert any(f.base_name == "MLmodel" for f in artifacts), [f.path for f in artifacts]

    wait_until(lambda: world.http.get("/readyz").status_code == 200, timeout=60, what="serving")
    answer = world.http.post(f"/v1/models/{world.model}/predict", json={"rows": [CHURN_ROW]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == 1

    # Batch: the version in the feature store, then a Parquet object under the store's prefix.
    status = world.scored({"kind": "feature_store", "dataset": "churn"})
    assert status["output_uri"].startswith(f"{store}/scores/churn/version=1/")
    filesystem, path = storage.resolve(status["output_uri"])
    scored = pq.read_table(path, filesystem=filesystem)
    assert scored.num_rows == ingested["rows"]
    assert scored.column("row").to_pylist() == list(range(ingested["rows"]))

    frame = churn_features(900, seed=11).drop(columns=["churned"])
    source = storage.join(store, "inbox", "customers.parquet")
    filesystem, path = storage.resolve(source)
    with filesystem.open_output_stream(path) as out:
        frame.to_parquet(out, index=False)
    status = world.scored({"kind": "parquet", "uri": source})
    assert status["output_uri"] == storage.join(store, "inbox", "customers.scored.parquet")
    result = pq.read_table(storage.resolve(status["output_uri"])[1], filesystem=filesystem)
    assert result.column("row").to_pylist() == list(range(900))
    online = world.http.post(
        f"/v1/models/{world.model}/predict",
        json={"rows": json.loads(frame.head(5).to_json(orient="records"))},
    )
    assert online.status_code == 200, online.text
    assert result.column("prediction").to_pylist()[:5] == online.json()["predictions"]
    leftovers = [f.base_name for f in storage.files_under(storage.join(store, "inbox"))]
    assert sorted(leftovers) == ["customers.parquet", "customers.scored.parquet"]  # no parts
