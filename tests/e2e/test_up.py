"""`streamops up`: the whole stack as local processes, ready, then stopped cleanly by Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from streamops.stack import redis_answers
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


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
    out = tmp_path / "up.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamops.cli", "up", "--workdir", str(tmp_path / "up")],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**env, "COLUMNS": "200"},
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
            assert client.keys(f"streamops:heartbeat:{service}:*"), service
        assert re.search(r"MLflow UI:\s+http://127\.0\.0\.1:\d+", text)
        gateway = re.search(r"gateway:\s+(http://127\.0\.0\.1:\d+)", text)
        assert gateway is not None, text
        assert httpx.get(f"{gateway.group(1)}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{gateway.group(1)}/readyz").status_code == 503  # no model yet
        exported = dict(re.findall(r"(\w+) (http://127\.0\.0\.1:\d+/metrics)", text))
        assert set(exported) == {"ingestor", "trainer", "predictor"}, text
        for service, endpoint in exported.items():
            scraped = httpx.get(endpoint)
            assert scraped.status_code == 200, service
            assert "faststream_received_messages" in scraped.text, service
        port = int(url.group(1).rsplit(":", 1)[1].split("/")[0])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        assert not redis_answers(port)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{gateway.group(1)}/healthz")
    finally:
        if proc.poll() is None:
            proc.kill()
