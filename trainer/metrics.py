"""What the trainer exports: trainings by outcome and duration, the gate's verdicts, the
hold-out metrics of each model's newest version, and promotions."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.events import ModelPromoted, ModelTrained
from shared.metrics import DURATION_BUCKETS


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.trainings = Counter(
            "streamops_trainings",
            "Trainings by outcome: trained, nothing_to_train, coalesced (trained elsewhere), "
            "worker_died",
            ["dataset", "outcome"],
            registry=r,
        )
        self.seconds = Histogram(
            "streamops_training_seconds",
            "Time of one training, fit to registered version",
            ["dataset"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.verdicts = Counter(
            "streamops_gate_verdicts",
            "Quality gate verdicts on new model versions",
            ["model", "verdict"],
            registry=r,
        )
        self.holdout = Gauge(
            "streamops_model_holdout_metric",
            "Hold-out metrics of each model's newest version",
            ["model", "metric"],
            registry=r,
        )
        self.newest = Gauge(
            "streamops_model_newest_version", "Newest registered version", ["model"], registry=r
        )
        self.promotions = Counter(
            "streamops_promotions",
            "Production alias moves published, by reason",
            ["model", "reason"],
            registry=r,
        )

        self.retrain_checks = Counter(
            "streamops_retrain_checks",
            "Passes of the retrain watcher over the specs' retrain rules",
            registry=r,
        )
        self.retrain_requests = Counter(
            "streamops_retrain_requests",
            "retrain-requested published, by model and reason (drift, decay, schedule)",
            ["model", "reason"],
            registry=r,
        )

        # The rollout guard (trainer/guarding.py): what it watches, each check's figure and
        # bound for the version watched, and how each watch ended.
        self.guard_watching = Gauge(
            "streamops_guard_watching",
            "1 while the guard watches a version (kind: promotion or canary)",
            ["model", "version", "kind"],
            registry=r,
        )
        self.guard_figure = Gauge(
            "streamops_guard_figure",
            "A watched version's figure for a check (errors, latency, prediction_shift, "
            "live_quality), and the bound it is held to (side: value or threshold)",
            ["model", "version", "check", "side"],
            registry=r,
        )
        self.guard_breaches = Counter(
            "streamops_guard_breaches",
            "Checks a watched version failed, each at the guard's verdict",
            ["model", "version", "check"],
            registry=r,
        )
        self.guard_verdicts = Counter(
            "streamops_guard_verdicts",
            "How watches ended: held, rolled_back, withdrawn (a canary), stepped, promoted",
            ["model", "kind", "outcome"],
            registry=r,
        )

    def trained(self, event: ModelTrained, seconds: float) -> None:
        self.trainings.labels(event.dataset, "trained").inc()
        self.seconds.labels(event.dataset).observe(seconds)
        self.verdicts.labels(event.model_name, "passed" if event.gate_passed else "failed").inc()
        self.newest.labels(event.model_name).set(event.model_version)
        for name, value in event.metrics.items():
            self.holdout.labels(event.model_name, name).set(value)

    def promoted(self, event: ModelPromoted) -> None:
        self.promotions.labels(event.model_name, event.reason).inc()
