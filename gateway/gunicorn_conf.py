"""gunicorn hooks for the gateway (`--config python:gateway.gunicorn_conf`)."""

from __future__ import annotations

from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    """A worker that is gone no longer counts in live gauges (multiprocess metrics)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
