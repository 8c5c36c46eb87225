"""Batch scoring with two `streamops predictor` processes, one killed (SIGKILL) midway: the
100,000-row file still gets exactly one prediction per row, in input order, equal to the
model's own predictions; `streamops score` shows the job to the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import redis
import yaml

from shared import predlog
from shared.datasets import load_spec
from shared.settings import BUNDLED_DATASETS
from streamops.client import score_status
from streamops.stack import Stack, local_stack
from tests.support.models import (
    churn_features,
    fit_model,
    in_process_predictions,
    register,
    write_parquet,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e
ROWS = 100_000


@pytest.fixture
def world(tmp_path: Path, redis_db: str, mlflow_url: str) -> Iterator[tuple[Stack, dict[str, str]]]:
    raw = yaml.safe_load((BUNDLED_DATASETS / "churn" / "spec.yaml").read_text())
    model = f"churn-score-e2e-{uuid.uuid4().hex[:8]}"
    raw["training"]["model_name"] = model
    (tmp_path / "datasets" / "churn").mkdir(parents=True)
    (tmp_path / "datasets" / "churn" / "spec.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "in").mkdir()
    env = {
        "STREAMOPS_REDIS_URL": redis_db,
        "STREAMOPS_MLFLOW_TRACKING_URI": mlflow_url,
        "STREAMOPS_DATASETS_DIR": str(tmp_path / "datasets"),
        "STREAMOPS_FEATURE_STORE_ROOT": str(tmp_path / "store"),
        "STREAMOPS_PREDICTOR_SCORE_ROOTS": str(tmp_path / "in"),
        "STREAMOPS_PREDICTOR_SCORE_CHUNK_ROWS": "5000",
        # Only this test's model: the MLflow server is shared by the whole session.
        "STREAMOPS_PREDICTOR_MODELS": model,
        "STREAMOPS_LEASE_MS": "2000",
        "STREAMOPS_CLAIM_INTERVAL_MS": "200",
    }
    with local_stack(tmp_path) as stack:
        yield stack, env


def _heartbeats(client: redis.Redis) -> int:
    return len(client.keys("streamops:heartbeat:{predictor}:*"))


def _score(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamops.cli", "score", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env, "COLUMNS": "200"},
    )


def _pending_of(client: redis.Redis, consumer_prefix: str) -> int:
    found: Any = client.xpending_range("score-chunks", "predictor", min="-", max="+", count=100)
    return sum(1 for p in found if p["consumer"].decode().endswith(consumer_prefix))


def test_a_replica_killed_mid_job_loses_and_repeats_no_row(
    world: tuple[Stack, dict[str, str]], tmp_path: Path, mlflow_url: str
) -> None:
    stack, env = world
    began = time.monotonic()
    spec = load_spec(tmp_path / "datasets", "churn")
    model = fit_model(spec, churn_features(3000, seed=3))
    version = register(mlflow_url, spec, model)
    source = write_parquet(tmp_path / "in" / "customers.parquet", churn_features(ROWS, seed=11))
    client = redis.Redis.from_url(env["STREAMOPS_REDIS_URL"])
    registered = time.monotonic()
    stack.start_service("victim", "predictor", env)
    stack.start_service("survivor", "predictor", env)
    wait_until(lambda: _heartbeats(client) == 2, timeout=90, what="two predictors serving")
    victim = str(stack.processes["victim"].pid)
    serving = time.monotonic()

    job = "e2e-kill"
    cli = _score(spec.model_name, str(source), "--job-id", job, env=env)
    # Kill the victim while it holds a chunk, a few chunks into the job.
    wait_until(
        lambda: (
            int(client.scard(f"streamops:score:{{score-chunks}}:{job}:done")) >= 3
            and _pending_of(client, f"-{victim}") > 0
        ),
        timeout=60,
        interval=0.005,
        what="the victim scoring a chunk, midway",
    )
    stack.kill("victim", signal.SIGKILL)
    out, errors = cli.communicate(timeout=60)
    scored = time.monotonic()
    print(
        f"register {registered - began:.1f} s, replicas up {serving - registered:.1f} s, "
        f"job {scored - serving:.1f} s"
    )

    assert cli.returncode == 0, errors
    assert f"{ROWS:,} rows scored by {spec.model_name} v{version}" in out
    output = tmp_path / "in" / "customers.scored.parquet"
    assert str(output) in out
    table = pq.read_table(output)
    assert table.num_rows == ROWS
    assert table.column("row").to_pylist() == list(range(ROWS))
    assert table.column("prediction").to_pylist() == in_process_predictions(model, spec, source)
    status = score_status(client, job)
    assert status is not None
    assert (status.status, status.chunks, status.chunks_done) == ("done", 20, 20)
    assert client.xlen("{score-chunks}.dlq") == 0
    # The prediction log holds every row once, though the victim died mid-chunk.
    logged = predlog.read_log(tmp_path / "store", spec.model_name, columns=["row", "source"])
    assert sorted(logged.column("row").to_pylist()) == list(range(ROWS))
    assert set(logged.column("source").to_pylist()) == {"batch"}

    refused = _score("no-such-model", str(source), env=env)
    _, errors = refused.communicate(timeout=60)
    assert refused.returncode == 1
    assert "unknown model" in errors
