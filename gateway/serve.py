"""The gateway's production entry point: gunicorn with uvicorn workers.

gunicorn supervises the workers (restarts one that dies, replaces them one by one on SIGHUP,
drains them on SIGTERM within `--graceful-timeout`); each worker builds its own app with
`gateway.app:build_app()`, so each has its own Redis connections and coalescer.
"""

from __future__ import annotations

import sys

from shared.settings import GatewaySettings

GRACEFUL_TIMEOUT_S = 20


def gunicorn_argv(settings: GatewaySettings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "gateway.app:build_app()",
        "--config",
        "python:gateway.gunicorn_conf",
        "--worker-class",
        "uvicorn_worker.UvicornWorker",
        "--workers",
        str(settings.workers),
        "--bind",
        f"{settings.host}:{settings.port}",
        "--graceful-timeout",
        str(GRACEFUL_TIMEOUT_S),
        # gunicorn 26 opens a control socket in $HOME by default: several gateways on one
        # host would fight over it, and nothing here uses it.
        "--no-control-socket",
        "--keep-alive",
        "5",
        "--log-level",
        settings.common.log_level.lower(),
    ]


def metrics_dir() -> str:
    """A fresh directory for the workers' multiprocess metrics (stale files from an earlier
    run would be added to this one's)."""
    import os
    import shutil
    import tempfile

    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        shutil.rmtree(given, ignore_errors=True)
        os.makedirs(given, exist_ok=True)
        return given
    return tempfile.mkdtemp(prefix="streamops-gateway-metrics-")
