"""What a predictor replica exports: the versions it serves, its loads and refusals, the rows it
predicts (online and in batch jobs), how long predicting takes, and the drift of live rows."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from predictor.drift import DriftMonitor
from shared.metrics import DURATION_BUCKETS, LATENCY_BUCKETS


class PredictorMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, drift: DriftMonitor | None = None
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # The live windows are state, but they exist only to be exported: they live here.
        self.drift = drift or DriftMonitor()
        r.register(self.drift)
        self.version = Gauge(
            "streamops_model_version_in_service",
            "Version of each model this replica serves",
            ["model"],
            registry=r,
        )
        self.runtime = Gauge(
            "streamops_model_runtime",
            "1 for the runtime that serves each model's version in service here (onnx: its "
            "verified compiled graph; native: the model's own library), 0 for the other",
            ["model", "runtime"],
            registry=r,
        )
        self.loads = Counter(
            "streamops_model_loads",
            "Model versions loaded (outcome loaded) or refused (outcome refused), by trigger",
            ["model", "trigger", "outcome"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "streamops_model_load_seconds",
            "Time to load, check and warm up a model version",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.rows = Counter(
            "streamops_predicted_rows",
            "Rows predicted, online (predict-requests) or in batch jobs",
            ["model", "path"],
            registry=r,
        )
        self.batches = Counter(
            "streamops_predict_batches",
            "Online predict batches answered, by outcome (ok, no_model, invalid, failed)",
            ["model", "outcome"],
            registry=r,
        )
        self.expired = Counter(
            "streamops_predict_batches_expired",
            "Online predict batches dropped unread because their deadline had passed",
            registry=r,
        )
        self.predict_seconds = Histogram(
            "streamops_predict_seconds",
            "Time of one predict call (several coalesced batches of one model), by runtime",
            ["model", "runtime"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Challengers (docs/rollout.md): the rows each shadowed, how many got production's
        # label (classifiers) or how far from production's value (regressors), its time.
        pair = ["model", "champion", "challenger"]
        self.shadow_rows = Counter(
            "streamops_shadow_rows",
            "Online rows a challenger predicted after production answered them",
            pair,
            registry=r,
        )
        self.shadow_agreeing = Counter(
            "streamops_shadow_agreeing_rows",
            "Shadowed rows the challenger gave the label production gave (classifiers)",
            pair,
            registry=r,
        )
        self.shadow_difference = Counter(
            "streamops_shadow_abs_difference",
            "Sum over shadowed rows of |challenger - production| (regressors)",
            pair,
            registry=r,
        )
        self.shadow_psi = Gauge(
            "streamops_shadow_score_psi",
            "PSI of the challenger's scores (probability of the last class, or the value) "
            "against production's on the same rows, over this replica's latest shadowed rows",
            pair,
            registry=r,
        )
        self.shadow_seconds = Histogram(
            "streamops_shadow_predict_seconds",
            "Time of one challenger predict call",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shadow_failures = Counter(
            "streamops_shadow_failures",
            "Challenger predict calls that failed (production's answers were sent regardless)",
            ["model", "version"],
            registry=r,
        )
