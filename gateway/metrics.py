"""What the gateway exports: requests by route and status, their latency, and what the models
answer (class counts and probabilities for classifiers, values for regressors), counted once
per batch answered by a predictor rather than once per request (a batch holds the rows of every
request coalesced in it, and counting per batch is what keeps this off the per-request cost).

Under gunicorn each worker is a process of its own, so the metrics use prometheus-client's
multiprocess mode when `PROMETHEUS_MULTIPROC_DIR` is set (`streamops gateway` sets it): every
worker writes its samples to files there, and `/metrics` adds up all workers' files, whichever
worker answers the scrape.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.registry import Collector

from shared.events import BatchPredicted
from shared.metrics import LATENCY_BUCKETS

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PROBABILITY_BUCKETS = tuple(i / 10 for i in range(1, 11))


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "streamops_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "streamops_http_request_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.classes = Counter(
            "streamops_predicted_class",
            "Predicted classes (classifiers), by model and version",
            ["model", "version", "label"],
            registry=r,
        )
        self.probability = Histogram(
            "streamops_prediction_probability",
            "Probability of the predicted class (classifiers)",
            ["model", "version"],
            buckets=PROBABILITY_BUCKETS,
            registry=r,
        )
        self.values = Histogram(
            "streamops_prediction_value",
            "Predicted values (regressors)",
            ["model", "version"],
            registry=r,
        )
        # Routes are few (the paths of the app's routes, not of requests), statuses fewer.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request answered (the labelled children kept: looking them up is a lock
        and a dict per call, paid once per route here)."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def answered(self, batch: BatchPredicted) -> None:
        """What a predictor answered for one batch (all the requests coalesced in it)."""
        if batch.failure is None:
            self.predictions(
                batch.model_name, batch.model_version or 0, batch.predictions, batch.probabilities
            )

    def predictions(
        self,
        model: str,
        version: int,
        predictions: Sequence[Any],
        probabilities: Sequence[Sequence[float]] | None,
    ) -> None:
        tag = str(version)
        if probabilities is None:
            for value in predictions:
                if isinstance(value, int | float):
                    self.values.labels(model, tag).observe(float(value))
            return
        for label, count in collections.Counter(map(str, predictions)).items():
            self.classes.labels(model, tag, label).inc(count)
        histogram = self.probability.labels(model, tag)  # looked up once per request
        for row in probabilities:
            histogram.observe(max(row))

    def exposition(self, *extra: Collector) -> tuple[bytes, str]:
        """The text a scrape gets: this process's registry, or every worker's files, plus
        `extra` collectors. Blocking: run it in a thread."""
        registry = CollectorRegistry()
        if multiprocess():
            from prometheus_client import multiprocess as mp

            mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry.register(_Registry(self.registry))
        for collector in extra:
            registry.register(collector)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _Registry(Collector):
    """A registry seen as one collector of another (so per-scrape extras can join it)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Any:
        return self.registry.collect()


class RequestMetrics:
    """Pure ASGI middleware: each HTTP request counted and timed under its route template (so
    `/v1/score/{job_id}` is one series, whatever the job ids)."""

    def __init__(self, app: Any, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def recording_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.request(path, method, status[0], time.perf_counter() - started)
