"""The training use case, free of any broker: dataset version → registered, judged model.

`train_for` returns the events to publish next: `model-trained`, and `model-promoted` when the
gate passed and the spec's promotion policy is auto.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds

from shared.compiling import VERDICT_TAG
from shared.datasets import DatasetSpec, load_spec
from shared.drift import reference_from
from shared.errors import VersionNotFound
from shared.events import (
    LOG_SOURCE_PREFIX,
    DataArrived,
    DataIngested,
    ModelPromoted,
    ModelTrained,
    PredictionLogSource,
    RetrainRequested,
    derived_event_id,
)
from shared.feature_store import FeatureStore, announcement
from shared.promotion import PRODUCTION, promote, shadow
from shared.registry import TAG, RegisteredVersion, Registry, TrainingRecord, TrainingRegistry
from trainer import estimators
from trainer.compile import compile_trained
from trainer.gate import Verdict, judge
from trainer.training import Trained, evaluate, fit, training_spec

log = logging.getLogger(__name__)

KEY_TAG = f"{TAG}training_key"


@dataclass(frozen=True)
class Outcome:
    trained: ModelTrained
    promoted: ModelPromoted | None


@dataclass(frozen=True)
class Plan:
    """What an event asks for: a model of `dataset` at `version`, known by `key`."""

    dataset: str
    model_name: str
    version: int
    key: str


def plan_for(event: DataIngested, datasets_dir: Path, store: FeatureStore) -> Plan | None:
    """Train on the dataset's newest state, so a burst of versions costs one more training,
    not one each; None when the dataset's spec asks for no training."""
    spec = load_spec(datasets_dir, event.dataset)
    if spec.training is None:
        return None
    newest = store.latest(event.dataset).version
    version = max(newest, event.version)
    key = f"{event.dataset}@{version}/{spec.training.fingerprint()[:16]}"
    return Plan(event.dataset, spec.model_name, version, key)


def retrain_plan(
    event: RetrainRequested, datasets_dir: Path, store: FeatureStore
) -> tuple[DataIngested, Plan] | None:
    """A retrain request as a training of the dataset's newest version, under a key of its
    own (the same version and spec would otherwise find the model already trained); None
    when the dataset has no version or no training."""
    spec = load_spec(datasets_dir, event.dataset)
    if spec.training is None:
        return None
    try:
        info = store.latest(event.dataset)
    except VersionNotFound:
        return None
    ingested = announcement(
        info,
        event_id=derived_event_id("retrain", event.event_id),
        correlation_id=event.correlation_id,
        new_version=False,
        source=info.source,
    )
    key = f"{event.dataset}@{info.version}/{spec.training.fingerprint()[:16]}"
    key = f"{key}/retrain-{event.reason}-{event.event_id.hex[:12]}"
    return ingested, Plan(event.dataset, spec.model_name, info.version, key)


def log_arrival(event: RetrainRequested, spec: DatasetSpec, store: FeatureStore) -> DataArrived:
    """A retrain on the labelled prediction log (`retrain.data: prediction_log`), as the data it
    asks the ingestor for: the newest version not itself made from the log, then the log of
    the last `log_days` before the request. The window ends at the request and the event id
    comes from it, so a redelivered request asks for the same rows, which make no second
    version (the same content hash)."""
    assert spec.training is not None
    assert spec.training.retrain is not None
    until = event.occurred_at
    real = [v for v in store.versions(spec.name) if not v.source.startswith(LOG_SOURCE_PREFIX)]
    return DataArrived(
        event_id=derived_event_id("retrain-on-log", event.event_id),
        occurred_at=until,
        correlation_id=event.correlation_id,
        dataset=spec.name,
        source=PredictionLogSource(
            model=spec.model_name,
            since=until - timedelta(days=spec.training.retrain.log_days),
            until=until,
            base_version=real[-1].version if real else None,
        ),
    )


def train_for(
    event: DataIngested,
    datasets_dir: Path,
    store: FeatureStore,
    registry: TrainingRegistry,
    plan: Plan | None = None,
    *,
    plugins_dir: Path | None = None,
) -> Outcome | None:
    """Train, register and judge the planned model (`plan`, or planned now), unless a model for
    exactly that state and spec is already registered (then report that one). An entry point
    is imported from the environment or `plugins_dir`."""
    plan = plan or plan_for(event, datasets_dir, store)
    if plan is None:
        log.info("dataset %s has no training section: nothing to train", event.dataset)
        return None
    spec = load_spec(datasets_dir, event.dataset)
    training = training_spec(spec)
    version, key = plan.version, plan.key
    existing = registry.find(spec.model_name, KEY_TAG, key)
    if existing is not None:
        log.info("%s already trained as %s v%d", key, existing.name, existing.version)
        return _finish(spec, event, existing, _verdict_of(existing), registry)
    info = store.get(event.dataset, version)
    frame = training_frame(store, spec, version)
    trained = fit(spec, frame, plugins_dir)
    verdict = _judge(spec, trained, registry)
    tags = {
        f"{TAG}dataset": spec.name,
        f"{TAG}dataset_version": str(version),
        f"{TAG}content_hash": info.content_hash,
        f"{TAG}training_spec": json.dumps(training.model_dump(mode="json"), sort_keys=True),
        KEY_TAG: key,
        f"{TAG}gate_passed": str(verdict.passed).lower(),
        f"{TAG}gate_reasons": json.dumps(list(verdict.reasons)),
    }
    if training.entry_point is not None:
        tags[f"{TAG}entry_point"] = training.entry_point
    onnx, compiled = compile_trained(spec, trained)
    tags[VERDICT_TAG] = compiled.text
    record = TrainingRecord(
        experiment=spec.name,
        model_name=spec.model_name,
        model=trained.pipeline,
        params=_params(spec, version, len(frame), trained),
        metrics={**trained.metrics, "training_seconds": trained.seconds},
        tags=tags,
        input_frame=frame,
        input_name=f"{spec.name}@v{version}",
        input_source=info.path,
        input_digest=info.content_hash,
        target=spec.target,
        example=trained.split.x_test.head(5),
        trusted_types=_trusted_types(spec, trained),
        drift_reference=reference_from(spec, trained.split.x_train).model_dump(mode="json"),
        flavor=trained.flavor,
        code_paths=_code_paths(trained),
        requirements=_requirements(trained),
        onnx=onnx,
    )
    registered = registry.log(record)
    registry.set_alias(spec.model_name, "dev", registered.version)
    if verdict.passed:
        registry.set_alias(spec.model_name, "staging", registered.version)
    log.info(
        "%s v%d: %s; gate %s: %s",
        spec.model_name,
        registered.version,
        trained.metrics,
        "passed" if verdict.passed else "failed",
        "; ".join(verdict.reasons),
    )
    return _finish(spec, event, registered, verdict, registry)


def training_frame(store: FeatureStore, spec: DatasetSpec, version: int) -> pd.DataFrame:
    """The rows to train on: version `version`, or every version up to it (train_on: all)."""
    if training_spec(spec).train_on == "all":
        table = store.dataset(spec.name).to_table(filter=ds.field("version") <= version)
        frame: pd.DataFrame = table.drop_columns(["version"]).to_pandas()
    else:
        frame = store.read(spec.name, version).to_pandas()
    return frame


def _judge(spec: DatasetSpec, trained: Trained, registry: Registry) -> Verdict:
    """Thresholds, then the production model on the same hold-out rows."""
    training = training_spec(spec)
    current = registry.alias(spec.model_name, PRODUCTION)
    if current is None:
        return judge(training, trained.metrics)
    try:
        champion = registry.load(spec.model_name, current)
        champion_metrics = evaluate(
            champion, training.task, trained.split.x_test, trained.split.y_test
        )
    except Exception as exc:  # a champion that cannot be scored is no reason to stop
        log.warning("could not evaluate production v%d: %s", current, exc)
        verdict = judge(training, trained.metrics)
        return Verdict(
            verdict.passed,
            (*verdict.reasons, f"production v{current} could not be evaluated: {exc}"),
        )
    return judge(training, trained.metrics, champion_metrics, current)


def _params(spec: DatasetSpec, version: int, rows: int, trained: Trained) -> dict[str, object]:
    training = training_spec(spec)
    params: dict[str, object] = {
        "dataset": spec.name,
        "dataset_version": version,
        "rows": rows,
        "task": training.task,
        # An entry point's model is named by its class (a Pipeline, an LGBMClassifier...).
        "estimator": (
            training.estimator.name if training.estimator else type(trained.pipeline).__name__
        ),
        "train_on": training.train_on,
        "split": training.split,
        "holdout_fraction": training.holdout_fraction,
        "seed": training.seed,
        "metric": training.metric,
    }
    if training.estimator is not None:
        params.update({f"estimator.{k}": v for k, v in training.estimator.params.items()})
    if training.entry_point is not None:
        params["entry_point"] = training.entry_point
        params.update({f"entry_params.{k}": v for k, v in training.entry_params.items()})
    return params


def _trusted_types(spec: DatasetSpec, trained: Trained) -> tuple[str, ...] | None:
    """A built-in estimator's reviewed skops types; None for an entry point's model: the
    logging trusts what skops finds in the object this trainer has just fitted."""
    training = training_spec(spec)
    if training.estimator is None:
        return None
    return estimators.resolve(training.estimator, training.task).trusted_types


def _code_paths(trained: Trained) -> tuple[str, ...]:
    entry = trained.entry
    if entry is None or entry.code_path is None:
        return ()
    return (str(entry.code_path),)


def _requirements(trained: Trained) -> tuple[str, ...]:
    entry = trained.entry
    if entry is None or entry.requirement is None:
        return ()
    return (entry.requirement,)


def _verdict_of(found: RegisteredVersion) -> Verdict:
    reasons = tuple(json.loads(found.tags.get(f"{TAG}gate_reasons", "[]")))
    return Verdict(found.tags.get(f"{TAG}gate_passed") == "true", reasons)


def _finish(
    spec: DatasetSpec,
    event: DataIngested,
    registered: RegisteredVersion,
    verdict: Verdict,
    registry: TrainingRegistry,
) -> Outcome:
    training = training_spec(spec)
    trained = ModelTrained(
        event_id=derived_event_id(ModelTrained.stream, registered.name, registered.version),
        correlation_id=event.correlation_id,
        model_name=registered.name,
        model_version=registered.version,
        run_id=registered.run_id,
        dataset=spec.name,
        dataset_version=int(registered.tags.get(f"{TAG}dataset_version", event.version)),
        metrics={k: v for k, v in registered.metrics.items() if k != "training_seconds"},
        gate_passed=verdict.passed,
        gate_reasons=verdict.reasons,
    )
    promoted = None
    if verdict.passed and training.promotion == "auto":
        current = registry.alias(registered.name, PRODUCTION)
        # A redelivered event must not undo a later promotion or a rollback.
        if current is None or current < registered.version:
            promoted = _promote(spec, registered.version, current, registry)
            promoted = promoted.model_copy(update={"correlation_id": event.correlation_id})
    return Outcome(trained, promoted)


def _promote(
    spec: DatasetSpec, version: int, current: int | None, registry: TrainingRegistry
) -> ModelPromoted:
    """Production, or the challenger when the spec asks for shadow evidence first and there
    is a production to shadow (the guard promotes it on that evidence: trainer/guarding.py)."""
    gate = spec.rollout.shadow_first if spec.rollout is not None else None
    if gate is None or current is None:
        return promote(registry, spec.model_name, version, "auto")
    return shadow(registry, spec.model_name, version, gate.sample, reason="auto")
