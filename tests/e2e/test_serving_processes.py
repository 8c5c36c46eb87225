"""Serving, with every service a process of its own (ingestor, trainer, two predictor replicas,
the gateway under gunicorn) against a real Redis and a real MLflow server.

One stack for the module, the tests in order: the first trains and promotes v1 through the
streams, the next promote v2 (trained, refused by the gate, prefetched, timed) and v3
(registered straight into MLflow, under load), then a corrupt v4; the prediction log, labels
and replay follow, then v2 as v3's challenger and as its canary.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import yaml
from mlflow import MlflowClient

from shared.datasets import load_spec
from shared.settings import BUNDLED_DATASETS
from streamops.stack import Running, Stack, bring_up, free_port
from tests.support.data import CHURN_ROW, churn_rows, write_churn_spec, write_csv
from tests.support.load import Load
from tests.support.models import churn_features, fit_model, register
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e
ROW = CHURN_ROW


@dataclass
class World:
    stack: Stack
    running: Running
    redis: redis.Redis
    http: httpx.Client
    model: str
    datasets: Path
    mlflow_url: str

    def events(self, stream: str) -> list[dict[str, Any]]:
        entries: Any = self.redis.xrange(stream)
        return [json.loads(fields[b"__data__"]) for _, fields in entries]

    def predict(self) -> httpx.Response:
        return self.http.post(f"/v1/models/{self.model}/predict", json={"rows": [ROW]})


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, mlflow_url: str
) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("serving")
    # The guard is off until its own tests: the swaps before them serve one row under load,
    # and the versions differ on it on purpose.
    model = write_churn_spec(workdir / "datasets", "churn-serve", rollout={"guard": False})
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STREAMOPS_REDIS_URL", redis_url)
        env.setenv("STREAMOPS_MLFLOW_TRACKING_URI", mlflow_url)
        env.setenv("STREAMOPS_DATASETS_DIR", str(workdir / "datasets"))
        env.setenv("STREAMOPS_CLAIM_INTERVAL_MS", "200")
        # Only this module's model: the MLflow server is shared by the whole session.
        env.setenv("STREAMOPS_PREDICTOR_MODELS", model)
        # Two gateway workers: each coalesces and gets its answers on its own channel.
        env.setenv("STREAMOPS_GATEWAY_WORKERS", "2")
        stack = Stack(workdir)
        try:
            services = ("ingestor", "trainer", "predictor", "predictor", "gateway")
            running = bring_up(stack, services)
            assert running.gateway_url is not None
            with httpx.Client(base_url=running.gateway_url, timeout=30) as http:
                yield World(stack, running, client, http, model, workdir / "datasets", mlflow_url)
        finally:
            stack.stop()
            client.close()


def test_ingest_train_promote_then_predict_over_http(world: World) -> None:
    csv = (BUNDLED_DATASETS / "churn" / "churn.csv").read_bytes()
    accepted = world.http.post(
        "/v1/datasets/churn/ingest", content=csv, headers={"Content-Type": "text/csv"}
    )
    assert accepted.status_code == 202, accepted.text
    flow = accepted.json()["correlation_id"]

    def promoted() -> list[dict[str, Any]]:
        return [e for e in world.events("model-promoted") if e["correlation_id"] == flow]

    (event,) = wait_until(promoted, timeout=240, what="model-promoted for the upload")
    assert event["model_name"] == world.model
    assert event["version"] == 1

    def both_serve_v1() -> bool:
        ready = world.http.get("/readyz").json()
        versions = [m.get(world.model) for m in ready["predictors"].values()]
        return versions == [1, 1]

    wait_until(both_serve_v1, timeout=30, what="both replicas serving v1")
    answer = world.predict()
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == 1
    assert answer.headers["X-Model-Version"] == "1"
    assert answer.json()["predictions"][0] in (0, 1)
    # Served compiled (its graph verified at registration), unless this run forces native
    # (`make test` runs this module again with STREAMOPS_PREDICTOR_RUNTIME=native).
    native = os.environ.get("STREAMOPS_PREDICTOR_RUNTIME") == "native"
    loads = [e for e in world.events("model-loads") if e["model_name"] == world.model]
    v1 = [e for e in loads if e["version"] == 1 and e["loaded"]]
    assert len({e["replica"] for e in v1}) == 2
    assert {e["runtime"] for e in v1} == {"native" if native else "onnx"}
    assert {e["compiled"] for e in v1} == (
        {"native: forced by settings (STREAMOPS_PREDICTOR_RUNTIME, _NATIVE_MODELS)"}
        if native
        else {"verified"}
    )


def test_a_promotion_is_served_by_every_replica_within_a_second(world: World) -> None:
    # A second version through the streams, with labels shuffled: the gate refuses it, and
    # it waits for a person to promote it. Meanwhile every replica has loaded it (prefetch).
    rows = churn_rows(3000, seed=11)
    labels = [r["churned"] for r in rows]
    random.Random(5).shuffle(labels)
    csv = world.stack.workdir / "inbox" / "shuffled.csv"
    write_csv(csv, [{**r, "churned": label} for r, label in zip(rows, labels, strict=True)])
    accepted = world.http.post(
        "/v1/datasets/churn/ingest", content=csv.read_bytes(), headers={"Content-Type": "text/csv"}
    )
    flow = accepted.json()["correlation_id"]

    def trained() -> list[dict[str, Any]]:
        return [e for e in world.events("model-trained") if e["correlation_id"] == flow]

    (candidate,) = wait_until(trained, timeout=240, what="model-trained for the upload")
    assert candidate["model_version"] == 2
    assert not candidate["gate_passed"]

    def prefetched() -> set[str]:
        loads = world.events("model-loads")
        return {e["replica"] for e in loads if e["version"] == 2 and e["trigger"] == "prefetch"}

    wait_until(lambda: len(prefetched()) == 2, timeout=60, what="both replicas prefetching v2")
    assert _serving(world) == {1}
    done = world.http.post(f"/v1/models/{world.model}/promote", json={"version": 2})
    assert done.status_code == 200, done.text
    promoted_id = done.json()["event_id"]
    wait_until(lambda: _serving(world) == {2}, timeout=30, what="v2 everywhere")

    (event,) = [e for e in world.events("model-promoted") if e["event_id"] == promoted_id]
    at = datetime.fromisoformat(event["occurred_at"])
    loads = [
        e
        for e in world.events("model-loads")
        if e["version"] == 2 and e["trigger"] == "promotion" and e["loaded"]
    ]
    assert len({e["replica"] for e in loads}) == 2
    lags = [(datetime.fromisoformat(e["occurred_at"]) - at).total_seconds() for e in loads]
    assert max(lags) < 1.0, lags
    assert world.predict().headers["X-Model-Version"] == "2"


def test_no_request_fails_while_a_promotion_happens_under_load(world: World) -> None:
    # Registered straight into MLflow: no model-trained, so no prefetch: a real load happens
    # while the replicas serve.
    spec = load_spec(world.datasets, "churn")
    model = fit_model(spec, churn_features(3000, seed=8))
    assert register(world.mlflow_url, spec, model, production=False) == 3
    load = Load(f"{world.running.gateway_url}/v1/models/{world.model}/predict", ROW)
    load.start()
    try:
        wait_until(lambda: load.count > 50, timeout=30, what="traffic flowing")
        done = world.http.post(f"/v1/models/{world.model}/promote", json={"version": 3})
        assert done.status_code == 200, done.text
        wait_until(lambda: _serving(world) == {3}, timeout=30, what="v3 everywhere")
        seen = load.count
        wait_until(lambda: load.count > seen + 50, timeout=30, what="traffic after the swap")
    finally:
        load.stop()

    assert load.failures == []
    assert len(load.by_replica) == 2  # both replicas took a share
    # Two gunicorn workers answered; any scrape adds up both (multiprocess metrics).
    text = world.http.get("/metrics").text
    route = f'route="/v1/models/{world.model}/predict",status="200"'
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("streamops_http_requests_total{") and route in line
    )
    assert served >= load.count
    for replica, answers in load.by_replica.items():
        assert {version for _, _, version in answers} == {2, 3}, replica
        # Once a replica has answered with v3, no request sent after that gets v2 from it.
        first_v3 = min(received for _, received, version in answers if version == 3)
        late_v2 = [a for a in answers if a[2] == 2 and a[0] > first_v3]
        assert late_v2 == [], replica


def test_a_corrupt_promotion_keeps_the_old_version_serving(world: World) -> None:
    mlflow = MlflowClient(tracking_uri=world.mlflow_url)
    run_id = mlflow.get_model_version(world.model, "1").run_id
    broken = mlflow.create_model_version(
        world.model, source=f"runs:/{run_id}/no-such-model", run_id=run_id
    )
    done = world.http.post(
        f"/v1/models/{world.model}/promote", json={"version": int(broken.version)}
    )
    assert done.status_code == 200, done.text

    def refusals() -> list[dict[str, Any]]:
        found = [
            e
            for e in world.events("model-loads")
            if e["version"] == int(broken.version) and not e["loaded"]
        ]
        return found if len({e["replica"] for e in found}) == 2 else []

    refused = wait_until(refusals, timeout=60, what="both replicas refusing the corrupt version")
    assert all(e["serving"] == 3 for e in refused)
    assert all("cannot load" in e["reason"] for e in refused)
    for _ in range(10):
        answer = world.predict()
        assert answer.status_code == 200
        assert answer.headers["X-Model-Version"] == "3"


def _serving(world: World) -> set[int | None]:
    ready = world.http.get("/readyz").json()
    return {models.get(world.model) for models in ready["predictors"].values()}


def _log_group(world: World) -> dict[str, int]:
    groups: Any = world.redis.xinfo_groups("predictions")
    group = next(g for g in groups if g["name"] == b"prediction-log")
    return {"pending": int(group["pending"]), "lag": int(group.get("lag") or 0)}


def test_predictions_are_logged_once_each_across_a_logger_killed_mid_batch(
    world: World,
) -> None:
    """2,000 HTTP predictions and 200 batch rows; the logger (in the ingestor) is killed while
    it holds a batch and restarted: the log holds each of them exactly once, with lineage."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.parquet as pq

    from shared import predlog
    from shared.events import ParquetInput, ScoreRequested
    from streamops.client import publish, wait_for_job

    store = Path(world.running.env["STREAMOPS_FEATURE_STORE_ROOT"])
    model_dir = predlog.model_dir(store, world.model)
    ids = [f"log-{i}" for i in range(2000)]

    def ask(rid: str) -> int:
        path = f"/v1/models/{world.model}/predict"
        return world.http.post(
            path, json={"rows": [ROW]}, headers={"X-Request-Id": rid}
        ).status_code

    def holding_a_batch() -> bool:
        return _log_group(world)["pending"] > 0 and any(model_dir.glob("date=*/part-*.parquet"))

    with ThreadPoolExecutor(8) as pool:
        statuses = pool.map(ask, ids)
        wait_until(holding_a_batch, timeout=60, interval=0.005, what="the logger holding a batch")
        world.stack.kill("ingestor")
        assert set(statuses) == {200}
    rows = pa.Table.from_pylist([ROW] * 200)
    source = world.datasets / "log-batch.parquet"
    pq.write_table(rows, source)
    publish(world.redis, ScoreRequested(job_id="log-job", model_name=world.model,
                                        input=ParquetInput(uri=str(source))))  # fmt: skip
    job = wait_for_job(world.redis, "log-job", timeout=60, interval=0.05)
    assert job is not None
    assert job.status == "done", job
    assert _log_group(world)["pending"] > 0  # the dead logger's batch: unwritten, or unacked

    port = free_port()
    restarted = {
        **world.running.env,
        "STREAMOPS_LEASE_MS": "1000",
        "STREAMOPS_METRICS_PORT": str(port),
        "STREAMOPS_INGESTOR_QUALITY_INTERVAL_S": "1",
    }
    world.stack.start_service("ingestor", "ingestor", restarted)
    world.running.metrics["ingestor"] = f"http://127.0.0.1:{port}/metrics"
    wait_until(lambda: _log_group(world) == {"pending": 0, "lag": 0}, timeout=60,
               what="the restarted logger writing every entry")  # fmt: skip
    table = predlog.read_log(store, world.model)
    ours = table.filter(pa.compute.is_in(table["request_id"], pa.array([*ids, "log-job"])))
    keys = list(zip(ours["request_id"].to_pylist(), ours["row"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == 2200  # none lost, none twice
    assert ours.filter(pa.compute.equal(ours["source"], "batch")).num_rows == 200
    run_id = MlflowClient(tracking_uri=world.mlflow_url).get_model_version(world.model, "3").run_id
    assert run_id
    assert set(ours["run_id"].to_pylist()) == {run_id}
    assert set(ours["version"].to_pylist()) == {3}

    import subprocess
    import sys

    shown = subprocess.run(
        [sys.executable, "-m", "streamops.cli", "explain-request", "log-7"],
        capture_output=True, text=True, env={**os.environ, **world.running.env}, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"model {world.model} v3" in shown.stdout
    assert run_id in shown.stdout


def test_labels_for_a_thousand_requests_give_the_live_accuracy_computed_by_hand(
    world: World,
) -> None:
    """Labels for 1,000 of the logged requests, posted over HTTP: the ingestor's live accuracy
    of the version that answered equals the accuracy of those answers against those labels."""
    import pyarrow as pa

    from shared import predlog

    store = Path(world.running.env["STREAMOPS_FEATURE_STORE_ROOT"])
    logged = predlog.read_log(store, world.model, columns=["request_id", "prediction", "version"])
    wanted = pa.array([f"log-{i}" for i in range(1000)])
    answers = logged.filter(pa.compute.is_in(logged["request_id"], wanted)).to_pylist()
    assert len(answers) == 1000
    rng = random.Random(13)
    labels = [{"request_id": a["request_id"], "label": rng.choice([0, 1])} for a in answers]
    for start in range(0, 1000, 250):
        sent = world.http.post(
            f"/v1/models/{world.model}/feedback", json={"labels": labels[start : start + 250]}
        )
        assert sent.status_code == 202, sent.text
    by_id = {a["request_id"]: a["prediction"] for a in answers}
    expected = sum(by_id[x["request_id"]] == x["label"] for x in labels) / 1000

    def live() -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(world.running.metrics["ingestor"], timeout=5).text
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                mine = sample.labels.get("model") == world.model
                if (
                    mine
                    and sample.labels.get("version") == "3"
                    and sample.labels.get("window") == "rows"
                ):
                    found[sample.labels.get("metric", sample.name)] = sample.value
        return found if found.get("streamops_live_labelled_rows") == 1000 else {}

    figures = wait_until(live, timeout=60, interval=0.5, what="live quality over 1,000 labels")
    assert figures["accuracy"] == pytest.approx(expected)


def test_replay_of_the_logged_window_with_another_version_matches_a_direct_computation(
    world: World,
) -> None:
    """`streamops replay` with v2 (registered, never promoted) over the rows logged in the
    last hour: its agreement with production and its accuracy on the labelled rows are those
    computed here from the log, the labels and v2 itself."""
    import re
    import subprocess
    import sys

    import numpy as np
    import pandas as pd
    import pyarrow.compute as pc

    from shared import labels, predlog
    from shared.datasets import feature_frame
    from shared.registry import MlflowRegistry

    env = {**os.environ, **world.running.env, "COLUMNS": "200"}
    shown = subprocess.run(
        [sys.executable, "-m", "streamops.cli", "replay", world.model, "--version", "2",
         "--since", "1h"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    store = Path(world.running.env["STREAMOPS_FEATURE_STORE_ROOT"])
    logged = predlog.read_log(store, world.model)
    logged = logged.filter(pc.is_valid(logged["features"]))
    frame = logged["features"].combine_chunks().flatten()
    names = [f.name for f in logged.schema.field("features").type]
    features = pd.DataFrame({n: a.to_pandas() for n, a in zip(names, frame, strict=True)})
    spec = load_spec(world.datasets, "churn")
    v2 = MlflowRegistry(world.mlflow_url).load(world.model, 2)
    again = v2.predict(feature_frame(spec, features))
    said = np.asarray(logged["prediction"].to_pylist())
    agreement = float(np.mean(again == said))
    found = re.search(r"agreement with production: ([0-9.]+)", shown.stdout)
    assert found is not None, shown.stdout
    assert float(found.group(1)) == pytest.approx(agreement, abs=5e-5)

    joined = labels.read_joined(store, world.model)
    truth = {(r["request_id"], r["row"]): r["label"] for r in joined.to_pylist()}
    keys = list(zip(logged["request_id"].to_pylist(), logged["row"].to_pylist(), strict=True))
    hits = [i for i, key in enumerate(keys) if key in truth]
    accuracy = float(np.mean([str(again[i]) == truth[keys[i]] for i in hits]))
    found = re.search(r"accuracy: production [0-9.]+, v2 ([0-9.]+)", shown.stdout)
    assert found is not None, shown.stdout
    assert float(found.group(1)) == pytest.approx(accuracy, abs=5e-5)
    assert f"on {len(hits)} labelled rows" in shown.stdout


def test_a_challenger_shadows_a_quarter_of_the_requests_and_answers_none(world: World) -> None:
    """v2 shadows production (v3) at 25% under a constant load: no request fails, every answer
    is production's, the challenger predicted 25% ± 5% of the rows, and the agreement the
    replicas export equals the agreement computed from the prediction log."""
    from shared import predlog

    set_ = world.http.post(f"/v1/models/{world.model}/shadow", json={"version": 2, "sample": 0.25})
    assert set_.status_code == 200, set_.text

    def both_shadow() -> bool:
        loads = [
            e
            for e in world.events("model-loads")
            if e["model_name"] == world.model and e["trigger"] == "shadow" and e["loaded"]
        ]
        return len({e["replica"] for e in loads if e["version"] == 2}) == 2

    wait_until(both_shadow, timeout=60, what="both replicas holding the challenger")
    started = datetime.now().astimezone()
    load = Load(f"{world.running.gateway_url}/v1/models/{world.model}/predict", ROW)
    load.start()
    try:
        wait_until(lambda: load.count >= 800, timeout=120, what="800 requests answered")
    finally:
        load.stop()
    assert load.failures == []
    answered = [a for answers in load.by_replica.values() for a in answers]
    assert {version for _, _, version in answered} == {3}  # never the challenger

    store = Path(world.running.env["STREAMOPS_FEATURE_STORE_ROOT"])

    def settled() -> tuple[list[dict[str, Any]], dict[str, float]] | None:
        # No other traffic since `started`: every record from then on is the load's. A batch's
        # shadow record is written after its answers (and its online record), so the log and the
        # replicas' counters are read together until they tell of the same shadowed rows.
        found = _shadow_metrics(world)
        rows = predlog.read_log(store, world.model, since=started, shadow=True).to_pylist()
        online = sum(r["source"] == "online" for r in rows)
        shadowed = sum(r["source"] == "shadow" for r in rows)
        if online == load.count and shadowed == found["rows"]:
            return rows, found
        return None

    both = wait_until(settled, timeout=60, what="the load's records and shadow metrics")
    assert both is not None
    rows, figures = both
    said = {(r["request_id"], r["row"]): r["prediction"] for r in rows if r["source"] == "online"}
    shadowed = [r for r in rows if r["source"] == "shadow"]
    assert {r["version"] for r in shadowed} == {2}
    assert 0.20 <= len(shadowed) / len(said) <= 0.30
    agreeing = sum(said[(r["request_id"], r["row"])] == r["prediction"] for r in shadowed)
    assert figures["agreeing"] / figures["rows"] == pytest.approx(agreeing / len(shadowed))
    assert figures["psi"] >= 0  # the score shift, from every replica that shadowed enough
    ended = world.http.delete(f"/v1/models/{world.model}/shadow")
    assert ended.status_code == 204


def test_a_canary_answers_a_tenth_of_the_requests_and_keeps_each_key_on_one_version(
    world: World,
) -> None:
    """v2 is the canary of production (v3) at 10%: of 2,000 requests from 1,000 routing keys
    (each key twice, from a pool of clients), 10% ± 3% are answered by v2, no request fails,
    and every key gets the same version both times. Withdrawn, production answers them all."""
    from concurrent.futures import ThreadPoolExecutor

    from gateway.canary import position

    url = f"/v1/models/{world.model}/predict"
    set_ = world.http.post(f"/v1/models/{world.model}/canary", json={"version": 2, "percent": 10})
    assert set_.status_code == 200, set_.text
    inside = next(f"probe-{i}" for i in range(1000) if position(f"probe-{i}") < 0.1)

    def version_for(key: str) -> int:
        answer = world.http.post(url, json={"rows": [ROW]}, headers={"X-Routing-Key": key})
        assert answer.status_code == 200, answer.text
        return int(answer.headers["X-Model-Version"])

    # Routed once both replicas hold it and every gateway worker has read their heartbeats
    # (each worker reads them every second, on its own): v2 for an inside key, without a
    # break, for longer than that second.
    import time

    since: list[float] = []

    def routed_everywhere() -> bool:
        if version_for(inside) != 2:
            since.clear()
            return False
        since[:] = since or [time.monotonic()]
        return time.monotonic() - since[0] > 1.5

    wait_until(routed_everywhere, timeout=60, what="every gateway worker routing to v2")
    keys = [f"client-{i}" for i in range(1000)] * 2
    random.Random(5).shuffle(keys)

    def ask(chunk: list[str]) -> list[tuple[str, int | str]]:
        said: list[tuple[str, int | str]] = []
        with httpx.Client(timeout=30) as http:
            for key in chunk:
                answer = http.post(
                    f"{world.running.gateway_url}{url}",
                    json={"rows": [ROW]},
                    headers={"X-Routing-Key": key},
                )
                ok = answer.status_code == 200
                said.append((key, int(answer.headers["X-Model-Version"]) if ok else answer.text))
        return said

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = [a for chunk in pool.map(ask, [keys[i::8] for i in range(8)]) for a in chunk]
    failed = [said for _, said in answers if isinstance(said, str)]
    assert failed == []
    by_key: dict[str, set[int | str]] = {}
    for key, said in answers:
        by_key.setdefault(key, set()).add(said)
    assert all(len(versions) == 1 for versions in by_key.values())
    versions = [said for _, said in answers]
    assert set(versions) == {2, 3}
    assert 0.07 <= versions.count(2) / len(versions) <= 0.13

    ended = world.http.delete(f"/v1/models/{world.model}/canary")
    assert ended.status_code == 204
    wait_until(lambda: all(version_for(inside) == 3 for _ in range(6)), timeout=30,
               what="production answering every key again")  # fmt: skip


def _varied_rows(rows: int, seed: int) -> list[dict[str, Any]]:
    """Churn feature rows as JSON would carry them (NaN as null)."""
    frame = churn_features(rows, seed=seed).drop(columns=["churned"])
    records: list[dict[str, Any]] = json.loads(frame.to_json(orient="records"))
    return records


def _lax_gate(world: World) -> None:
    """The module's spec with a lax gate (accuracy 0.5 decides, any margin against
    production) and the guard on, watching 18 s against the 15 s before a promotion (the
    load gives several hundred rows in that time, over the 150 a verdict needs).

    Latency is judged only above a p99 of 2 s: these tests are about what a version predicts.
    On two cores shared with the trainer and eight load clients, a good version's p99 once
    swung to 493 ms against a limit of 257 ms (3 times production's), run natively, and the
    guard rolled it back. The latency check has its own test (tests/unit/test_guard.py).
    """
    path = world.datasets / "churn" / "spec.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["training"]["metric"] = "accuracy"
    spec["training"]["gate"] = {"minimum": {"accuracy": 0.5}, "champion_margin": 1.0}
    spec["rollout"] = {
        "watch_minutes": 0.3,
        "baseline_minutes": 0.25,
        "min_rows": 150,
        "p99_floor_ms": 2000,
    }
    path.write_text(yaml.safe_dump(spec))


def _training_csv(world: World, seed: int, label: int | None = None) -> bytes:
    """Churn rows as the spec reads them, their features and labels from the generator
    production's version was trained on; `label`: nearly every label that class instead."""
    rows = churn_rows(1500, seed=seed)
    frame = churn_features(1500, seed=seed)
    for i, (row, values) in enumerate(zip(rows, frame.to_dict("records"), strict=True)):
        for name, value in values.items():
            if isinstance(value, float) and np.isnan(value):
                row[str(name)] = ""
            elif isinstance(value, bool | np.bool_):
                row[str(name)] = "true" if value else "false"
            else:
                row[str(name)] = str(value)
        if label is not None:
            row["churned"] = str(label if i % 50 else 1 - label)  # two classes, barely
    return write_csv(world.datasets.parent / f"train-{seed}.csv", rows).read_bytes()


def _trained_and_promoted(world: World, csv: bytes) -> int:
    """Ingest `csv` through the gateway; the version the trainer made of it and promoted."""
    accepted = world.http.post(
        "/v1/datasets/churn/ingest", content=csv, headers={"Content-Type": "text/csv"}
    )
    assert accepted.status_code == 202, accepted.text
    flow = accepted.json()["correlation_id"]

    def promoted() -> list[dict[str, Any]]:
        events = world.events("model-promoted")
        return [e for e in events if e["correlation_id"] == flow and e["reason"] == "auto"]

    (auto,) = wait_until(promoted, timeout=240, what="the new version promoted")
    return int(auto["version"])


def test_a_good_version_that_passes_a_lax_gate_is_held_by_the_guard(world: World) -> None:
    """Under a load of varied rows, data like production's training data is ingested under
    a lax gate: the trainer's version passes, is promoted, is watched against what
    production answered before, and held. No request fails."""
    import time

    _lax_gate(world)
    csv = _training_csv(world, seed=10)
    load = Load(f"{world.running.gateway_url}/v1/models/{world.model}/predict", ROW,
                varied=_varied_rows(300, seed=21))  # fmt: skip
    began = time.monotonic()
    load.start()
    try:
        # Production's answers to these rows fill the guard's baseline window (15 s): the new
        # version is held against them, not against the one row of the tests before.
        wait_until(lambda: time.monotonic() - began > 16 and load.count > 300, timeout=60,
                   what="a baseline of varied traffic")  # fmt: skip
        good = _trained_and_promoted(world, csv)
        mlflow = MlflowClient(tracking_uri=world.mlflow_url)

        def verdict() -> str:
            tags = mlflow.get_model_version(world.model, str(good)).tags
            return str(tags.get("streamops.guard", ""))

        said = wait_until(verdict, timeout=120, what="the guard's verdict on the good version")
    finally:
        load.stop()
    assert said.startswith("held"), said
    assert load.failures == []
    assert int(mlflow.get_model_version_by_alias(world.model, "production").version) == good
    assert not [e for e in world.events("model-promoted") if e["previous_version"] == good]


def test_a_bad_version_that_passes_a_lax_gate_is_rolled_back_by_the_guard(world: World) -> None:
    """The same way, data whose labels are nearly all one class (the class production says
    least): the trainer's version answers that class, passes the lax gate and is promoted,
    under a load of varied rows. The guard rolls it back within its watch, saying why in
    `model-promoted` and `streamops models`; once a replica is back on the version before, no
    request gets the bad one from it; no request fails."""
    rows = _varied_rows(300, seed=21)
    said = world.http.post(f"/v1/models/{world.model}/predict", json={"rows": rows[:200]})
    assert said.status_code == 200, said.text
    before = said.json()["model_version"]
    labels = said.json()["predictions"]
    csv = _training_csv(world, seed=44, label=min({0, 1}, key=labels.count))

    load = Load(f"{world.running.gateway_url}/v1/models/{world.model}/predict", ROW, varied=rows)
    load.start()
    try:
        wait_until(lambda: load.count > 300, timeout=60, what="traffic flowing")
        bad = _trained_and_promoted(world, csv)

        def guarded() -> list[dict[str, Any]]:
            events = world.events("model-promoted")
            return [e for e in events if e["reason"] == "guard" and e["previous_version"] == bad]

        (event,) = wait_until(guarded, timeout=90, what="the guard's rollback")
        wait_until(lambda: _serving(world) == {before}, timeout=30, what="the version before")
        seen = load.count
        wait_until(lambda: load.count > seen + 100, timeout=30, what="traffic after the rollback")
    finally:
        load.stop()
    assert load.failures == []
    assert event["version"] == before
    checks = {b["check"]: b for b in event["breaches"]}
    assert checks["prediction_shift"]["value"] > checks["prediction_shift"]["threshold"]
    for replica, answers in load.by_replica.items():
        bad_seen = [received for _, received, version in answers if version == bad]
        if not bad_seen:
            continue
        back = min(r for sent, r, v in answers if v == before and sent > min(bad_seen))
        assert [a for a in answers if a[2] == bad and a[0] > back] == [], replica
    tags = MlflowClient(tracking_uri=world.mlflow_url).get_model_version(world.model, str(bad)).tags
    assert tags["streamops.guard"].startswith("rolled back: prediction_shift")
    shown = _cli(world, "models", world.model)
    assert "rolled back" in shown, shown  # the table may wrap the rest of the cell


def _cli(world: World, *args: str) -> str:
    import subprocess
    import sys

    shown = subprocess.run(
        [sys.executable, "-m", "streamops.cli", *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **world.running.env, "COLUMNS": "250"},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def _shadow_metrics(world: World) -> dict[str, float]:
    """Shadowed and agreeing rows of this module's model, summed over the replicas."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {
        "streamops_shadow_rows_total": "rows",
        "streamops_shadow_agreeing_rows_total": "agreeing",
        "streamops_shadow_score_psi": "psi",
    }
    found = dict.fromkeys(names.values(), 0.0)
    found["psi"] = -1.0  # none exported yet
    for process, url in world.running.metrics.items():
        if not process.startswith("predictor"):
            continue
        for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
            for sample in family.samples:
                if sample.name not in names or sample.labels.get("model") != world.model:
                    continue
                if sample.name == "streamops_shadow_score_psi":
                    found["psi"] = max(found["psi"], sample.value)
                else:
                    found[names[sample.name]] += sample.value
    return found
