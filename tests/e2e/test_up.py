"""`streamops up`: the whole stack as local processes, ready, honouring the settings exported
before it; a CSV dropped into its inbox and announced with redis-cli by a relative name is
ingested, trained, promoted and served; then Ctrl-C stops it all cleanly."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from shared.settings import BUNDLED_DATASETS
from streamops.stack import free_port, redis_answers
from tests.support.data import CHURN_ROW
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e
ROW = CHURN_ROW


def redis_cli() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        pytest.fail("redis-cli is not installed (Debian: apt-get install redis-tools)")
    return binary


def _printed(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found is not None, text
    return found.group(1)


def _announce_and_serve(text: str, gateway: str, store: Path) -> None:
    """The acceptance: a CSV copied into the printed inbox, announced by its bare name with
    redis-cli, ends up served by the gateway; its version is in the exported feature store."""
    inbox = Path(_printed(r"inbox:\s+(\S+)", text))
    shutil.copy(BUNDLED_DATASETS / "churn" / "churn.csv", inbox / "customers-week-1.csv")
    url = _printed(r"Redis:\s+(redis://\S+)", text)
    argv = [redis_cli(), "-u", url, "XADD", "data-arrived", "*"]
    argv += ["dataset", "churn", "source", "customers-week-1.csv"]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)

    def served() -> bool:
        answer = httpx.post(f"{gateway}/v1/models/churn/predict", json={"rows": [ROW]})
        return answer.status_code == 200

    try:
        wait_until(served, timeout=300, interval=0.5, what="the dropped CSV's model served")
    except TimeoutError as exc:
        client = redis.Redis.from_url(url)
        streams = {s: client.xrange(s) for s in ("data-ingested", "data-rejected", "model-trained")}
        raise AssertionError(f"not served; the streams say {streams}") from exc
    assert (store / "churn" / "versions" / "version=1").is_dir()


@pytest.mark.timeout(900)
def test_up_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "STREAMOPS_REDIS_URL",
            "REDIS_URL",
            "STREAMOPS_MLFLOW_TRACKING_URI",
            "MLFLOW_TRACKING_URI",
        )
    }
    # Settings exported before `up`: they are the ones the services use.
    port = free_port()
    exported = {
        "STREAMOPS_FEATURE_STORE_ROOT": str(tmp_path / "my-store"),
        "STREAMOPS_GATEWAY_PORT": str(port),
        "STREAMOPS_INGESTOR_DATA_ROOTS": str(tmp_path / "mine"),
    }
    out = tmp_path / "up.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamops.cli", "up", "--workdir", str(tmp_path / "up")],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**env, **exported},  # no terminal: rich's width is 80, and must not wrap
        )
    try:
        wait_until(
            lambda: "Ctrl-C stops everything" in out.read_text(),
            timeout=240,
            what=f"streamops up ready ({out})",
        )
        text = out.read_text()
        url = re.search(r"Redis:\s+(redis://\S+)", text)
        assert url is not None, text
        client = redis.Redis.from_url(url.group(1))
        for service in ("ingestor", "trainer", "predictor"):
            assert client.keys(f"streamops:heartbeat:{{{service}}}:*"), service
        assert re.search(r"MLflow UI:\s+http://127\.0\.0\.1:\d+", text)
        gateway = re.search(r"gateway:\s+(http://127\.0\.0\.1:\d+)", text)
        assert gateway is not None, text
        assert gateway.group(1) == f"http://127.0.0.1:{port}"
        # `up` prints what it used, and where each value came from.
        store = _printed(r"STREAMOPS_FEATURE_STORE_ROOT=(\S+) \(from the environment\)", text)
        assert store == exported["STREAMOPS_FEATURE_STORE_ROOT"]
        roots = _printed(r"STREAMOPS_INGESTOR_DATA_ROOTS=(\S+) \(yours, then up's\)", text)
        assert json.loads(roots)[0] == str(tmp_path / "mine")
        # The export line is one line a shell reads back as the same settings.
        line = next(ln for ln in text.splitlines() if ln.startswith("  CLI:       export "))
        words = dict(w.split("=", 1) for w in shlex.split(line.split("export ", 1)[1]))
        assert words["STREAMOPS_GATEWAY_PORT"] == str(port)
        assert json.loads(words["STREAMOPS_INGESTOR_DATA_ROOTS"]) == json.loads(roots)
        assert httpx.get(f"{gateway.group(1)}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{gateway.group(1)}/readyz").status_code == 503  # no model yet
        exported = dict(re.findall(r"(\w+) (http://127\.0\.0\.1:\d+/metrics)", text))
        assert set(exported) == {"ingestor", "trainer", "predictor"}, text
        for service, endpoint in exported.items():
            scraped = httpx.get(endpoint)
            assert scraped.status_code == 200, service
            assert "faststream_received_messages" in scraped.text, service
        _announce_and_serve(text, gateway.group(1), tmp_path / "my-store")
        redis_port = int(url.group(1).rsplit(":", 1)[1].split("/")[0])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        assert not redis_answers(redis_port)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{gateway.group(1)}/healthz")
    finally:
        # A failed assertion still stops the stack: Ctrl-C first, so `up` stops its processes
        # (each in a session of its own, a SIGKILL to `up` would leave them running).
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
