"""Bring your own model, with every service a process of its own (ingestor, trainer, two
predictor replicas, the gateway under gunicorn) and nothing restarted during the module.

Models come from a plain script (tests/support/outside.py, no streamops in it), from the
bundled entry-point dataset, and from a dataset spec added while the stack runs. The
replicas serve only this module's models (`byom-<id>-*`: the MLflow server is shared by the
test session), and may not load the xgboost flavor, so that a refused flavor can be shown.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis
import yaml
from mlflow import MlflowClient

from shared.settings import BUNDLED_DATASETS, REPO_ROOT
from streamops.stack import Running, Stack, bring_up
from tests.support.data import CHURN_ROW, churn_rows, write_csv
from tests.support.load import Load
from tests.support.outside import ROW, frame
from tests.support.scoring import scored as score_job
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e
# The bundled dataset whose spec trains through an entry point (datasets/plugins/).
EXAMPLE = "rentals"


@dataclass
class World:
    stack: Stack
    running: Running
    redis: redis.Redis
    http: httpx.Client
    prefix: str
    datasets: Path
    mlflow_url: str

    def name(self, kind: str) -> str:
        return f"{self.prefix}-{kind}"

    def events(self, stream: str) -> list[dict[str, Any]]:
        entries: Any = self.redis.xrange(stream)
        return [json.loads(fields[b"__data__"]) for _, fields in entries]

    def predict(self, model: str, rows: list[dict[Any, Any]]) -> httpx.Response:
        return self.http.post(f"/v1/models/{model}/predict", json={"rows": rows})

    def outside(self, kind: str, model: str, *, seed: int = 3, production: bool = True) -> int:
        """Register a model the way a notebook would, in a process with no streamops."""
        command = [sys.executable, "-m", "tests.support.outside", kind]
        command += ["--tracking-uri", self.mlflow_url, "--name", model, "--seed", str(seed)]
        done = subprocess.run(
            [*command, *(["--production"] if production else [])],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1])

    def answers(self, model: str, rows: list[dict[Any, Any]]) -> dict[str, Any]:
        """The model's answer once the gateway has a route for it and a replica serves it
        (empty until then)."""
        response = self.predict(model, rows)
        answer: dict[str, Any] = response.json() if response.status_code == 200 else {}
        return answer

    def refusals(self, model: str) -> list[dict[str, Any]]:
        found = [e for e in self.events("model-loads") if e["model_name"] == model]
        refused = [e for e in found if not e["loaded"]]
        return refused if len({e["replica"] for e in refused}) == 2 else []

    def openapi_paths(self) -> dict[str, Any]:
        found: dict[str, Any] = self.http.get("/openapi.json").json()["paths"]
        return found


def _prepare_datasets(root: Path, prefix: str) -> Path:
    """The bundled entry-point dataset and its plugins, under a model name of this module's."""
    datasets = root / "datasets"
    shutil.copytree(BUNDLED_DATASETS / "plugins", datasets / "plugins")
    shutil.copytree(BUNDLED_DATASETS / EXAMPLE, datasets / EXAMPLE)
    spec_path = datasets / EXAMPLE / "spec.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["training"]["model_name"] = f"{prefix}-{EXAMPLE}"
    spec_path.write_text(yaml.safe_dump(spec))
    return datasets


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, mlflow_url: str
) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("byom")
    prefix = f"byom-{uuid.uuid4().hex[:8]}"
    datasets = _prepare_datasets(workdir, prefix)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STREAMOPS_REDIS_URL", redis_url)
        env.setenv("STREAMOPS_MLFLOW_TRACKING_URI", mlflow_url)
        env.setenv("STREAMOPS_DATASETS_DIR", str(datasets))
        env.setenv("STREAMOPS_CLAIM_INTERVAL_MS", "200")
        env.setenv("STREAMOPS_GATEWAY_WORKERS", "2")
        env.setenv("STREAMOPS_PREDICTOR_MODELS", f"{prefix}-*")
        env.setenv("STREAMOPS_PREDICTOR_FLAVORS", "sklearn,lightgbm,python_function")
        env.setenv("STREAMOPS_PREDICTOR_CONVERGE_S", "2")
        stack = Stack(workdir)
        try:
            services = ("ingestor", "trainer", "predictor", "predictor", "gateway")
            running = bring_up(stack, services)
            assert running.gateway_url is not None
            with httpx.Client(base_url=running.gateway_url, timeout=30) as http:
                yield World(stack, running, client, http, prefix, datasets, mlflow_url)
        finally:
            stack.stop()
            client.close()


def test_a_lightgbm_model_registered_elsewhere_is_served_with_probabilities(world: World) -> None:
    model = world.name("lgbm")
    assert world.openapi_paths().get(f"/v1/models/{model}/predict") is None
    assert world.predict(model, [ROW]).status_code == 404
    assert world.outside("lightgbm", model) == 1

    answer = wait_until(lambda: world.answers(model, [ROW]), timeout=30, what=f"{model} answers")
    assert answer["model_version"] == 1
    assert answer["classes"] == [0, 1]
    (probabilities,) = answer["probabilities"]
    assert abs(sum(probabilities) - 1) < 1e-6
    path = world.openapi_paths()[f"/v1/models/{model}/predict"]
    body = path["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    components = world.http.get("/openapi.json").json()["components"]["schemas"]
    row_ref = components[body.rsplit("/", 1)[1]]["properties"]["rows"]["items"]["$ref"]
    columns = components[row_ref.rsplit("/", 1)[1]]["properties"]
    assert set(columns) == {"amount", "age", "visits"}
    # The signature's types are enforced at the gateway: a text where a number goes is a 422.
    bad = world.predict(model, [{**ROW, "age": "old"}])
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "rows", 0, "age"]


def test_a_custom_pyfunc_regressor_answers_online_and_in_batch(world: World) -> None:
    model = world.name("price")
    world.outside("pyfunc", model)
    rows = frame(rows=40, seed=9)[0]
    records = rows.to_dict(orient="records")
    expected = (rows["amount"] * 0.5 + rows["visits"] * 10.0 - rows["age"] * 0.1).tolist()

    answer = wait_until(lambda: world.answers(model, records), timeout=30, what=f"{model}")
    assert answer["probabilities"] is None
    assert answer["predictions"] == pytest.approx(expected)

    source = world.stack.workdir / "inbox" / "baskets.parquet"
    source.parent.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(source, index=False)
    status = score_job(world.http, model, {"kind": "parquet", "uri": str(source)})
    scored = pq.read_table(status["output_uri"].removeprefix("file://")).to_pandas()
    assert scored["row"].tolist() == list(range(len(rows)))
    assert scored["prediction"].tolist() == pytest.approx(expected)


def test_the_entry_point_dataset_is_trained_gated_promoted_and_served(world: World) -> None:
    model = world.name(EXAMPLE)
    csv = next((BUNDLED_DATASETS / EXAMPLE).glob("*.csv"))
    accepted = world.http.post(
        f"/v1/datasets/{EXAMPLE}/ingest",
        content=csv.read_bytes(),
        headers={"Content-Type": "text/csv"},
    )
    assert accepted.status_code == 202, accepted.text
    flow = accepted.json()["correlation_id"]

    def promoted() -> list[dict[str, Any]]:
        return [e for e in world.events("model-promoted") if e["correlation_id"] == flow]

    (event,) = wait_until(promoted, timeout=240, what=f"{model} promoted")
    assert event["model_name"] == model
    head = pd.read_csv(csv, nrows=3)
    records = json.loads(head.to_json(orient="records", date_format="iso"))
    answer = wait_until(lambda: world.answers(model, records), timeout=30, what=f"{model}")
    assert len(answer["predictions"]) == 3
    assert answer["probabilities"] is not None

    # The same lineage as a built-in training: dataset, version, content hash, input.
    mlflow = MlflowClient(tracking_uri=world.mlflow_url)
    version = mlflow.get_model_version(model, str(event["version"]))
    tags = version.tags
    assert tags["streamops.dataset"] == EXAMPLE
    assert tags["streamops.dataset_version"] == "1"
    assert len(tags["streamops.content_hash"]) >= 32
    assert version.run_id is not None
    run = mlflow.get_run(version.run_id)
    assert run.data.params["dataset"] == EXAMPLE
    assert run.inputs is not None
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == [f"{EXAMPLE}@v1"]


def test_a_dataset_added_while_running_is_ingested_trained_promoted_and_served(
    world: World,
) -> None:
    name = "fresh"
    model = world.name(name)
    spec = yaml.safe_load((BUNDLED_DATASETS / "churn" / "spec.yaml").read_text())
    spec["name"] = name
    spec["training"]["model_name"] = model
    (world.datasets / name).mkdir()
    (world.datasets / name / "spec.yaml").write_text(yaml.safe_dump(spec))
    csv = world.stack.workdir / "inbox" / "fresh.csv"
    write_csv(csv, churn_rows(2000, seed=21))
    accepted = world.http.post(
        f"/v1/datasets/{name}/ingest",
        content=csv.read_bytes(),
        headers={"Content-Type": "text/csv"},
    )
    assert accepted.status_code == 202, accepted.text
    answer = wait_until(lambda: world.answers(model, [CHURN_ROW]), timeout=240, what=model)
    assert answer["model_version"] == 1
    assert f"/v1/models/{model}/predict" in world.openapi_paths()


def test_a_model_without_signature_and_a_refused_flavor_serve_nothing(world: World) -> None:
    unsigned, xgb = world.name("unsigned"), world.name("xgb")
    world.outside("unsigned", unsigned)
    world.outside("xgboost", xgb)

    (refusal, *_) = wait_until(lambda: world.refusals(unsigned), timeout=30, what="unsigned")
    assert "signature" in refusal["reason"]
    (refusal, *_) = wait_until(lambda: world.refusals(xgb), timeout=30, what="xgboost refused")
    assert "xgboost" in refusal["reason"]
    assert "not allowed" in refusal["reason"]
    for model in (unsigned, xgb):
        assert world.predict(model, [ROW]).status_code == 404
        assert f"/v1/models/{model}/predict" not in world.openapi_paths()
    # The others keep serving.
    assert world.predict(world.name("lgbm"), [ROW]).status_code == 200


def test_a_new_version_swaps_in_under_load_and_a_removed_alias_stops_serving(
    world: World,
) -> None:
    model = world.name("lgbm")
    url = f"{world.running.gateway_url}/v1/models/{model}/predict"
    load = Load(url, ROW)
    load.start()
    try:
        wait_until(lambda: load.count > 50, timeout=30, what="traffic flowing")
        assert world.outside("lightgbm", model, seed=8) == 2
        wait_until(lambda: _serving(world, model) == {2}, timeout=30, what="v2 everywhere")
        seen = load.count
        wait_until(lambda: load.count > seen + 50, timeout=30, what="traffic after the swap")
    finally:
        load.stop()
    assert load.failures == []
    assert len(load.by_replica) == 2
    for replica, answers in load.by_replica.items():
        assert {version for _, _, version in answers} == {1, 2}, replica
        first_v2 = min(received for _, received, version in answers if version == 2)
        assert [a for a in answers if a[2] == 1 and a[0] > first_v2] == [], replica

    MlflowClient(tracking_uri=world.mlflow_url).delete_registered_model_alias(model, "production")

    def gone() -> bool:
        return world.predict(model, [ROW]).status_code == 404

    wait_until(gone, timeout=30, what=f"{model} no longer served")
    refused = world.predict(model, [ROW]).json()
    assert refused["error"] == "ModelNotFound"
    assert f"/v1/models/{model}/predict" not in world.openapi_paths()


def _serving(world: World, model: str) -> set[int | None]:
    ready = world.http.get("/readyz").json()
    return {models.get(model) for models in ready["predictors"].values()}
