"""The gateway's /docs page renders in a real browser with no route to any CDN: Swagger UI's
scripts and styles come from the gateway itself (fastapi-offline), not from the internet.

Headless chromium gets a host resolver that answers NOTFOUND for every name but 127.0.0.1, so a
page that still pointed at a CDN would stay blank and the predict operation would be missing."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from gateway.app import build_app
from shared.settings import BUNDLED_DATASETS, CommonSettings, GatewaySettings
from streamops.stack import free_port
from tests.support.shelf import ModelShelf
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # No name resolves except the loopback address: a CDN cannot be reached even if the
    # machine has internet.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    # Virtual time runs the page's scripts (Swagger UI fetching openapi.json and rendering)
    # before the DOM is dumped, without a wall-clock sleep.
    "--virtual-time-budget=10000",
]


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail(
            "chromium is not installed; the /docs page is checked in a real browser "
            "(Debian: apt-get install chromium, or make deps-test)",
            pytrace=False,
        )
    return binary


@pytest.fixture
def gateway_url(redis_db: str, tmp_path: Path) -> Iterator[str]:
    """The gateway under uvicorn on a free port, on a real Redis."""
    common = CommonSettings(
        redis_url=redis_db, feature_store_root=tmp_path / "store", datasets_dir=BUNDLED_DATASETS
    )
    settings = GatewaySettings(common=common, inbox=tmp_path / "inbox")
    port = free_port()
    app = build_app(settings, registry=ModelShelf())
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=30, what="the gateway under uvicorn")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_the_docs_page_renders_the_predict_operation_without_a_cdn(
    gateway_url: str, tmp_path: Path
) -> None:
    binary = chromium()
    argv = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"]
    dumped = subprocess.run(
        [*argv, "--dump-dom", f"{gateway_url}/docs"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    # Rendered by Swagger UI's script: the page's own HTML has neither.
    assert 'class="swagger-ui"' in dom, dom[:2000]
    assert "/v1/models/churn/predict" in dom, dom[:2000]
    assert "cdn.jsdelivr.net" not in dom
