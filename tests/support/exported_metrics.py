"""Every series name the services export, read from the services' own metrics objects (not a
list kept by hand), so the alert rules and dashboard queries can be checked against them."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from gateway.metrics import GatewayMetrics
from ingestor.metrics import IngestorMetrics
from predictor.metrics import PredictorMetrics
from shared.metrics import broker_middleware
from shared.stream_metrics import StreamsCollector
from trainer.metrics import TrainerMetrics

# What each metric type appears as in an exposition (prometheus-client's naming).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "unknown": ("",),
}

# Series Prometheus itself adds to every scrape target.
SCRAPE_SERIES = frozenset(
    {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}
)


class _Described(Collector):
    """A collector known by what it describes (custom collectors that would need Redis)."""

    def __init__(self, inner: StreamsCollector) -> None:
        self.inner = inner

    def collect(self) -> Iterable[Metric]:
        return self.inner.describe()


def registries() -> dict[str, CollectorRegistry]:
    """A fresh registry per service, built the way each app factory builds it."""
    found: dict[str, CollectorRegistry] = {}
    for service, metrics in (
        ("ingestor", IngestorMetrics()),
        ("trainer", TrainerMetrics()),
        ("predictor", PredictorMetrics()),
    ):
        broker_middleware(metrics.registry, service)
        found[service] = metrics.registry
    gateway = GatewayMetrics()
    gateway.registry.register(_Described(StreamsCollector(client=None)))
    found["gateway"] = gateway.registry
    return found


def series_by_service() -> dict[str, frozenset[str]]:
    """The series names each service's /metrics can carry."""
    out: dict[str, frozenset[str]] = {}
    for service, registry in registries().items():
        names: set[str] = set()
        for family in registry.collect():
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        out[service] = frozenset(names)
    return out


def exported_series() -> frozenset[str]:
    """Every series name any service exports."""
    return frozenset().union(*series_by_service().values())


# Labels the exposition adds to some series of a type, on top of the metric's own.
SUFFIX_LABELS = {
    ("histogram", "_bucket"): frozenset({"le"}),
    ("summary", ""): frozenset({"quantile"}),
}

# Labels Prometheus attaches to every series it scrapes (the target's).
TARGET_LABELS = frozenset({"job", "instance"})


def _families_with_labels(collector: Collector) -> Iterable[tuple[Metric, frozenset[str]]]:
    """Each family `collector` exports, with the label names of its samples.

    prometheus-client keeps label names only in private attributes (`_labelnames`, on metric
    objects and on custom collectors' metric families): read here, in one place, and raised on
    when missing, so a change in prometheus-client fails the tests rather than hiding labels.
    """
    if isinstance(collector, MetricWrapperBase):
        labels = frozenset(collector._labelnames)
        return [(family, labels) for family in collector.describe()]
    describe = getattr(collector, "describe", None)
    families = list(describe() if describe is not None else collector.collect())
    found = []
    for family in families:
        names = getattr(family, "_labelnames", None)
        if names is None:
            raise TypeError(f"no label names on {family.name} from {collector!r}")
        found.append((family, frozenset(names)))
    return found


def labels_by_series() -> dict[str, frozenset[str]]:
    """The label names of every series name any service exports (`_bucket` series with `le`),
    not counting the target labels (TARGET_LABELS) Prometheus adds at scrape time."""
    out: dict[str, set[str]] = {}
    for registry in registries().values():
        for collector in list(registry._collector_to_names):
            for family, labels in _families_with_labels(collector):
                for suffix in SUFFIXES[family.type]:
                    extra = SUFFIX_LABELS.get((family.type, suffix), frozenset())
                    out.setdefault(family.name + suffix, set()).update(labels | extra)
    return {name: frozenset(labels) for name, labels in out.items()}
