"""The real `prometheus` with the repository's deploy/prometheus/local.yml, against the stack
`streamops up` runs, after real traffic: every target up, the alert rules loaded and evaluated
without error, and the key series queryable.

`streamops up` runs the way the docs tell a user to (from the repository root, default workdir
var/up), but in a directory laid out like the repository whose deploy/prometheus is the real
one, linked: local.yml finds the targets `up` wrote through its own relative path, and the
checkout's var/up (shared with anyone else running the stack here) is left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.settings import BUNDLED_DATASETS, REPO_ROOT
from streamops.stack import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

JOBS = ("ingestor", "trainer", "predictor", "gateway")
GROUPS = {
    "streamops-targets",
    "streamops-serving",
    "streamops-streams",
    "streamops-data",
    "streamops-rollout",
}
DRIFT_MIN_ROWS = 20  # so a few requests export PSI (the default waits for 500 rows)


@dataclass
class Up:
    """A running `streamops up`: its gateway and the directory it ran in."""

    root: Path
    gateway: str
    model: str


@pytest.fixture
def repo_like(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "deploy").mkdir(parents=True)
    (root / "deploy" / "prometheus").symlink_to(REPO_ROOT / "deploy" / "prometheus")
    return root


@pytest.fixture
def up(repo_like: Path, datasets: tuple[Path, str], redis_db: str, mlflow_url: str) -> Iterator[Up]:
    env = {
        **os.environ,
        "STREAMOPS_REDIS_URL": redis_db,
        "STREAMOPS_MLFLOW_TRACKING_URI": mlflow_url,
        "STREAMOPS_DATASETS_DIR": str(datasets[0]),
        "STREAMOPS_PREDICTOR_DRIFT_MIN_ROWS": str(DRIFT_MIN_ROWS),
        # Only this test's model: the MLflow server is shared by the whole session.
        "STREAMOPS_PREDICTOR_MODELS": datasets[1],
        "COLUMNS": "200",
    }
    out = repo_like.parent / "up.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamops.cli", "up"],
            cwd=repo_like,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_until(lambda: _up_ready(proc, out), timeout=240, what=f"streamops up ready ({out})")
        gateway = re.search(r"gateway:\s+(http://127\.0\.0\.1:\d+)", out.read_text())
        assert gateway is not None, out.read_text()
        yield Up(repo_like, gateway.group(1), datasets[1])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _up_ready(proc: subprocess.Popen[bytes], out: Path) -> bool:
    if proc.poll() is not None:
        pytest.fail(f"streamops up exited with {proc.returncode}:\n{out.read_text()}")
    return "Ctrl-C stops everything" in out.read_text()


@dataclass
class Prometheus:
    url: str
    log: Path

    def data(self, path: str, **params: str) -> Any:
        answer = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        answer.raise_for_status()
        return answer.json()["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.data("/api/v1/query", query=expr)["result"]
        return found


@pytest.fixture
def prometheus(up: Up, tmp_path: Path) -> Iterator[Prometheus]:
    """The repository's local.yml, reached the way a user reaches it from the repo root."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: apt-get install prometheus (Debian's package)")
    port = free_port()
    log = tmp_path / "prometheus.log"
    argv = [
        binary,
        "--config.file=deploy/prometheus/local.yml",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with log.open("w") as sink:
        proc = subprocess.Popen(argv, cwd=up.root, stdout=sink, stderr=subprocess.STDOUT)
    server = Prometheus(f"http://127.0.0.1:{port}", log)
    try:
        wait_until(lambda: _ready(server), timeout=60, what=f"prometheus ready (log: {log})")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ready(server: Prometheus) -> bool:
    try:
        return httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


# --- traffic ------------------------------------------------------------------------------------


def _rows(count: int) -> list[dict[str, Any]]:
    """Valid feature rows, varied so the drift window sees a spread of values."""
    plans = ("basic", "standard", "premium")
    return [
        {
            "tenure_months": 3 * i,
            "monthly_charges": 20.0 + 4.5 * i,
            "support_calls": i % 6,
            "usage_gb": 2.0 * i,
            "satisfaction": 1.0 + (i % 5),
            "plan": plans[i % 3],
            "autopay": i % 2 == 0,
        }
        for i in range(count)
    ]


def _train_and_predict(up: Up) -> None:
    """Ingest the bundled churn sample (the trainer trains and promotes v1), then predict."""
    with httpx.Client(base_url=up.gateway, timeout=30) as http:
        csv = (BUNDLED_DATASETS / "churn" / "churn.csv").read_bytes()
        accepted = http.post(
            "/v1/datasets/churn/ingest", content=csv, headers={"Content-Type": "text/csv"}
        )
        assert accepted.status_code == 202, accepted.text

        def serving() -> bool:
            ready = http.get("/readyz").json()
            return any(up.model in models for models in ready["predictors"].values())

        wait_until(serving, timeout=300, interval=0.5, what=f"a predictor serving {up.model}")
        for _ in range(3):
            rows = _rows(DRIFT_MIN_ROWS)
            answer = http.post(f"/v1/models/{up.model}/predict", json={"rows": rows})
            assert answer.status_code == 200, answer.text


# --- what Prometheus shows ----------------------------------------------------------------------


def _targets_up(server: Prometheus) -> set[tuple[str, str]]:
    """The (job, instance) of every active target once all are up, else nothing."""
    active = server.data("/api/v1/targets", state="active")["activeTargets"]
    if any(t["health"] != "up" for t in active):
        return set()
    return {(t["labels"]["job"], t["labels"]["instance"]) for t in active}


def _rules_evaluated(server: Prometheus) -> dict[str, list[dict[str, Any]]]:
    """The rule groups by name once every rule has been evaluated without error, else nothing."""
    groups = server.data("/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    if any(rule["health"] != "ok" for rule in rules):
        return {}
    return {group["name"]: group["rules"] for group in groups}


def test_prometheus_scrapes_every_service_of_streamops_up(up: Up, prometheus: Prometheus) -> None:
    for job in JOBS:
        assert (up.root / "var" / "up" / "prometheus" / f"{job}.json").is_file(), job
    _train_and_predict(up)

    targets = wait_until(
        lambda: _targets_up(prometheus),
        timeout=60,
        interval=0.5,
        what=f"every target up (log: {prometheus.log})",
    )
    # `instance` is the process name: one series per replica, whatever ports `up` picked.
    assert targets == {(job, job) for job in JOBS}

    groups = wait_until(
        lambda: _rules_evaluated(prometheus),
        timeout=60,
        interval=0.5,
        what="the alert rules loaded and evaluated without error",
    )
    assert set(groups) == GROUPS
    alerts = {rule["name"] for rules in groups.values() for rule in rules}
    assert "StreamopsNoModelInService" in alerts
    assert "StreamopsFeatureDrift" in alerts

    queries = {
        f'streamops_model_version_in_service{{job="predictor", model="{up.model}"}}': {"predictor"},
        'streamops_http_requests_total{job="gateway", status="200"}': {"gateway"},
        'streamops_stream_length{job="gateway", stream="data-arrived"}': {"gateway"},
        'streamops_ingested_rows_total{job="ingestor", dataset="churn"}': {"ingestor"},
        f'streamops_feature_psi{{job="predictor", model="{up.model}"}}': {"predictor"},
        "faststream_received_messages_total": {"ingestor", "trainer", "predictor"},
    }
    for expr, jobs in queries.items():

        def answered(expr: str = expr, jobs: set[str] = jobs) -> bool:
            return {s["metric"]["job"] for s in prometheus.query(expr)} >= jobs

        wait_until(answered, timeout=60, interval=0.5, what=f"{expr} from {sorted(jobs)}")
    (served,) = prometheus.query(
        f'streamops_model_version_in_service{{job="predictor", model="{up.model}"}}'
    )
    assert served["value"][1] == "1"
