"""Ingestor and trainers as processes against a real Redis and a real MLflow server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from mlflow import MlflowClient

from shared.settings import BUNDLED_DATASETS
from streamops.stack import Stack, local_stack
from tests.support.data import churn_rows, write_csv
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def _events(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    entries: Any = client.xrange(stream)
    return [json.loads(fields[b"__data__"]) for _, fields in entries]


def _spec_dir(tmp_path: Path, slow: bool) -> tuple[Path, str]:
    spec = yaml.safe_load((BUNDLED_DATASETS / "churn" / "spec.yaml").read_text())
    name = f"churn-e2e-{uuid.uuid4().hex[:8]}"
    spec["training"]["model_name"] = name
    if slow:  # a fit of about 3 s here (twice the longest lease below), caught in the middle
        spec["training"]["estimator"]["params"] = {
            "max_iter": 800,
            "learning_rate": 0.01,
            "max_leaf_nodes": 63,
            "early_stopping": False,
            "random_state": 0,
        }
    (tmp_path / "datasets" / "churn").mkdir(parents=True)
    (tmp_path / "datasets" / "churn" / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "datasets", name


@pytest.fixture
def world(tmp_path: Path, redis_db: str, mlflow_url: str) -> Iterator[tuple[Stack, dict[str, str]]]:
    env = {
        "STREAMOPS_REDIS_URL": redis_db,
        "STREAMOPS_MLFLOW_TRACKING_URI": mlflow_url,
        "STREAMOPS_FEATURE_STORE_ROOT": str(tmp_path / "store"),
        "STREAMOPS_INGESTOR_DATA_ROOTS": f"{BUNDLED_DATASETS},{tmp_path / 'inbox'}",
        "STREAMOPS_TRAINER_WATCH_S": "0.5",
        "STREAMOPS_CLAIM_INTERVAL_MS": "200",
    }
    (tmp_path / "inbox").mkdir()
    with local_stack(tmp_path) as stack:
        yield stack, env


def _start(stack: Stack, name: str, command: str, env: dict[str, str]) -> None:
    client = redis.Redis.from_url(env["STREAMOPS_REDIS_URL"])
    before = len(client.keys(f"streamops:heartbeat:{{{command}}}:*"))
    stack.start_service(name, command, env)
    wait_until(
        lambda: len(client.keys(f"streamops:heartbeat:{{{command}}}:*")) > before,
        timeout=90,
        what=f"{name} alive (log: {stack.log(name)})",
    )


def _streamops(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamops.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "COLUMNS": "200"},
        timeout=120,
        check=False,
    )


def _pipeline(
    stack: Stack, env: dict[str, str], trainers: tuple[str, ...] = ("trainer",)
) -> redis.Redis:
    """Start the ingestor and `trainers`, announce the churn sample; a client of the streams."""
    _start(stack, "ingestor", "ingestor", env)
    for name in trainers:
        _start(stack, name, "trainer", env)
    client = redis.Redis.from_url(env["STREAMOPS_REDIS_URL"])
    _arrive(client)
    return client


def _arrive(client: redis.Redis) -> None:
    body = json.dumps({"dataset": "churn", "source": "churn/churn.csv"})
    client.xadd("data-arrived", {"__data__": body})


def test_data_arrival_ends_in_a_promoted_model(
    world: tuple[Stack, dict[str, str]], tmp_path: Path, mlflow_url: str
) -> None:
    stack, env = world
    spec_dir, name = _spec_dir(tmp_path, slow=False)
    env = {**env, "STREAMOPS_DATASETS_DIR": str(spec_dir)}
    client = _pipeline(stack, env)
    (trained,) = wait_until(
        lambda: _events(client, "model-trained"),
        timeout=180,
        what=f"model-trained (log: {stack.log('trainer')})",
    )
    (promoted,) = wait_until(
        lambda: _events(client, "model-promoted"), timeout=30, what="model-promoted"
    )
    assert (trained["model_name"], trained["model_version"], trained["gate_passed"]) == (
        name,
        1,
        True,
    )
    assert (promoted["version"], promoted["reason"]) == (1, "auto")
    registry = MlflowClient(tracking_uri=mlflow_url)
    assert registry.get_model_version_by_alias(name, "production").version == "1"

    # A second dataset version makes model version 2 (promoted or not, by its gate).
    write_csv(tmp_path / "inbox" / "more.csv", churn_rows(3000, seed=5))
    client.xadd(
        "data-arrived",
        {
            "__data__": json.dumps(
                {"dataset": "churn", "source": str(tmp_path / "inbox" / "more.csv")}
            )
        },
    )
    wait_until(
        lambda: len(_events(client, "model-trained")) == 2, timeout=180, what="the second model"
    )
    # By hand: promote 2, roll back to 1; each is one model-promoted event.
    assert _streamops("promote", name, "2", env=env).returncode == 0
    rolled = _streamops("rollback", name, env=env)
    assert rolled.returncode == 0, rolled.stderr
    assert registry.get_model_version_by_alias(name, "production").version == "1"
    assert _events(client, "model-promoted")[-1]["reason"] == "rollback"
    listing = _streamops("models", name, env=env)
    assert "production" in listing.stdout
    assert "roc_auc" in listing.stdout
    # Someone moves the alias in the MLflow UI: serving hears of it.
    registry.set_registered_model_alias(name, "production", "2")
    external = wait_until(
        lambda: [e for e in _events(client, "model-promoted") if e["reason"] == "external"],
        timeout=30,
        what="the watcher reporting the external move",
    )
    assert (external[0]["version"], external[0]["previous_version"]) == (2, 1)


def test_kill_9_mid_fit_then_another_trainer_trains_it_once(
    world: tuple[Stack, dict[str, str]], tmp_path: Path, mlflow_url: str
) -> None:
    stack, env = world
    spec_dir, name = _spec_dir(tmp_path, slow=True)
    env = {**env, "STREAMOPS_DATASETS_DIR": str(spec_dir), "STREAMOPS_LEASE_MS": "3000"}
    client = _pipeline(stack, env, ("first",))
    wait_until(
        lambda: client.keys("streamops:training:*"),
        timeout=60,
        what="the first trainer fitting",
        interval=0.02,
    )
    stack.kill("first", signal.SIGKILL)
    registry = MlflowClient(tracking_uri=mlflow_url)
    assert registry.search_model_versions(f"name = '{name}'") == []

    _start(stack, "second", "trainer", env)
    wait_until(
        lambda: _events(client, "model-trained"),
        timeout=240,
        what=f"the second trainer's model (log: {stack.log('second')})",
    )
    assert [int(v.version) for v in registry.search_model_versions(f"name = '{name}'")] == [1]


def test_a_fit_longer_than_the_lease_is_not_trained_twice(
    world: tuple[Stack, dict[str, str]], tmp_path: Path, mlflow_url: str
) -> None:
    stack, env = world
    spec_dir, name = _spec_dir(tmp_path, slow=True)
    env = {**env, "STREAMOPS_DATASETS_DIR": str(spec_dir), "STREAMOPS_LEASE_MS": "1000"}
    client = _pipeline(stack, env, ("one", "two"))
    wait_until(lambda: _events(client, "model-trained"), timeout=240, what="model-trained")
    wait_until(
        lambda: int(client.xpending("data-ingested", "trainer")["pending"]) == 0,
        timeout=30,
        what="the event acked",
    )
    registry = MlflowClient(tracking_uri=mlflow_url)
    assert [int(v.version) for v in registry.search_model_versions(f"name = '{name}'")] == [1]
    assert len(_events(client, "model-trained")) == 1


def test_a_burst_of_versions_during_a_fit_costs_one_more_training(
    world: tuple[Stack, dict[str, str]], tmp_path: Path, mlflow_url: str
) -> None:
    stack, env = world
    spec_dir, name = _spec_dir(tmp_path, slow=True)
    env = {**env, "STREAMOPS_DATASETS_DIR": str(spec_dir)}
    client = _pipeline(stack, env)
    wait_until(lambda: client.keys("streamops:training:*"), timeout=60, what="the first fit")
    for n in range(5):  # five new versions while the first fit runs
        part = tmp_path / "inbox" / f"burst{n}.csv"
        write_csv(part, churn_rows(2000, seed=100 + n))
        client.xadd(
            "data-arrived", {"__data__": json.dumps({"dataset": "churn", "source": str(part)})}
        )
    wait_until(lambda: len(_events(client, "data-ingested")) == 6, timeout=60, what="6 versions")
    wait_until(
        lambda: (
            int(client.xpending("data-ingested", "trainer")["pending"]) == 0
            and client.xlen("data-ingested") == 6
            and not client.keys("streamops:training:*")
            and len(_events(client, "model-trained")) >= 2
        ),
        timeout=300,
        what="the trainer done with the burst",
    )
    registry = MlflowClient(tracking_uri=mlflow_url)
    versions = sorted(
        (int(v.version), v.tags["streamops.dataset_version"])
        for v in registry.search_model_versions(f"name = '{name}'")
    )
    assert versions == [(1, "1"), (2, "6")]
    # Events repeated for the coalesced versions carry the same ids: two distinct facts.
    assert len({e["event_id"] for e in _events(client, "model-trained")}) == 2


def _workers_of(pid: int) -> list[int]:
    """The trainer's training workers (spawned children running multiprocessing's spawn_main)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")
        )
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def test_a_worker_killed_mid_fit_is_replaced_and_the_training_retried(
    world: tuple[Stack, dict[str, str]], tmp_path: Path, mlflow_url: str
) -> None:
    stack, env = world
    spec_dir, name = _spec_dir(tmp_path, slow=True)
    env = {**env, "STREAMOPS_DATASETS_DIR": str(spec_dir), "STREAMOPS_LEASE_MS": "2000"}
    client = _pipeline(stack, env)
    trainer = stack.processes["trainer"]

    def fitting_worker() -> list[int]:
        return _workers_of(trainer.pid) if client.keys("streamops:training:*") else []

    (worker,) = wait_until(fitting_worker, timeout=60, what="a fitting worker")
    os.kill(worker, signal.SIGKILL)
    wait_until(
        lambda: _events(client, "model-trained"),
        timeout=240,
        what=f"the retried training (log: {stack.log('trainer')})",
    )
    assert trainer.poll() is None, "the trainer itself kept running"
    registry = MlflowClient(tracking_uri=mlflow_url)
    assert [int(v.version) for v in registry.search_model_versions(f"name = '{name}'")] == [1]
