"""Prometheus metrics: one registry per service, served on `STREAMOPS_METRICS_PORT`.

Each service builds its own `CollectorRegistry` in its app factory (no metric lives in a module
global), so tests can read a service's metrics without a global state, and two services in one
process do not mix. The broker's traffic (received, processed by status, duration, published)
comes from FastStream's Prometheus middleware on the same registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)

# Seconds: from a cache hit to a slow model download.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


def broker_middleware(registry: CollectorRegistry, service: str) -> Any:
    from faststream.redis.prometheus import RedisPrometheusMiddleware

    return RedisPrometheusMiddleware(registry=registry, app_name=service)


def serve(registry: CollectorRegistry, port: int | None) -> Callable[[], None]:
    """Serve `/metrics` on `port` (none: not served); returns what stops it."""
    if port is None:
        return lambda: None
    server, thread = start_http_server(port, addr="0.0.0.0", registry=registry)
    log.info("metrics on :%d/metrics", port)

    def stop() -> None:
        server.shutdown()
        thread.join(timeout=5)

    return stop


class MetricsEndpoint:
    """`/metrics` of one service, started and stopped with it (FastStream hooks)."""

    def __init__(self, registry: CollectorRegistry, port: int | None) -> None:
        self.registry = registry
        self.port = port
        self._stop: Callable[[], None] = lambda: None

    async def start(self) -> None:
        self._stop = serve(self.registry, self.port)

    async def stop(self) -> None:
        self._stop()
