"""What the ingestor exports: rows accepted and quarantined, batches by outcome, the bytes
each new version takes in the feature store, and how long an ingest takes."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram

from ingestor.quality import QualityCollector
from shared.events import DataIngested, DataRejected
from shared.metrics import DURATION_BUCKETS


class IngestorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rows = Counter(
            "streamops_ingested_rows",
            "Rows read, by outcome: accepted into a version, or quarantined",
            ["dataset", "outcome"],
            registry=r,
        )
        self.batches = Counter(
            "streamops_ingest_batches",
            "Arrivals handled, by outcome (new_version, unchanged, or rejected) and rejection kind",
            ["dataset", "outcome", "kind"],
            registry=r,
        )
        self.bytes = Counter(
            "streamops_ingested_bytes",
            "Bytes of Parquet written to the feature store for new versions",
            ["dataset"],
            registry=r,
        )
        # The prediction log's loggers, the label joiners and live quality (docs/feedback.md).
        self.log = LogMetrics(r)
        self.labels = LabelMetrics(r)
        self.quality = QualityCollector()
        r.register(self.quality)
        self.seconds = Histogram(
            "streamops_ingest_seconds",
            "Time to read, validate and store one arrival",
            ["dataset"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )

    def record(self, result: DataIngested | DataRejected, seconds: float) -> None:
        dataset = result.dataset
        self.seconds.labels(dataset).observe(seconds)
        if isinstance(result, DataRejected):
            self.batches.labels(dataset, "rejected", result.kind).inc()
            return
        outcome = "new_version" if result.new_version else "unchanged"
        self.batches.labels(dataset, outcome, "").inc()
        if result.new_version:
            self.rows.labels(dataset, "accepted").inc(result.rows)
            self.rows.labels(dataset, "quarantined").inc(result.quarantined_rows)
            self.bytes.labels(dataset).inc(stored_bytes(Path(result.path)))


class LogMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.records = Counter(
            "streamops_prediction_log_records",
            "Records written to the prediction log by the loggers, by model",
            ["model"],
            registry=r,
        )
        self.entries = Counter(
            "streamops_prediction_log_entries",
            "`predictions` entries handled, by outcome (written, dead_lettered, lost)",
            ["outcome"],
            registry=r,
        )


class LabelMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.labels = Counter(
            "streamops_labels",
            "Labels joined to the prediction log, by model and outcome (joined, or unmatched: "
            "no logged row has that request id and row)",
            ["model", "outcome"],
            registry=registry or CollectorRegistry(),
        )


def stored_bytes(version_dir: Path) -> int:
    """Size of a version's files (a stat per file, once per new version: not a hot path)."""
    return sum(f.stat().st_size for f in version_dir.rglob("*") if f.is_file())
