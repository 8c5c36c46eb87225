"""The trainer's handler on FastStream's in-memory broker, with fakes for the training locks
and for the worker pool: data-ingested in, model events out, no Redis, MLflow or workers."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from faststream.redis import RedisBroker, TestRedisBroker

from ingestor.service import ingest
from shared.events import DataArrived, DataIngested, ModelPromoted, ModelTrained
from shared.feature_store import FeatureStore
from shared.settings import BUNDLED_DATASETS, IngestorSettings, TrainerSettings
from tests.service.fakes import FakeLedger, FakeStatusBoard, NoPendingEntries, published
from tests.service.trainer_fakes import FakeFits, FakeLocks, InProcessFits, RecordingRegistry
from tests.support.waiting import eventually
from trainer.app import build_app
from trainer.metrics import TrainerMetrics
from trainer.pool import Fits
from trainer.service import Outcome, plan_for

pytestmark = pytest.mark.anyio
Make = Callable[..., IngestorSettings]


@pytest.fixture
def settings(make_settings: Make) -> TrainerSettings:
    return TrainerSettings(common=make_settings().common, watch_s=0)


@pytest.fixture
def ingested(make_settings: Make) -> DataIngested:
    """Version 1 of the churn sample, in the feature store the trainer reads."""
    ingestor_settings = make_settings()
    store = FeatureStore(ingestor_settings.common.feature_store_root)
    event = ingest(DataArrived(dataset="churn", source="churn/churn.csv"), ingestor_settings, store)
    assert isinstance(event, DataIngested)
    return event


def _outcome(event: DataIngested, promoted: bool = True) -> Outcome:
    trained = ModelTrained(
        model_name="churn",
        model_version=3,
        run_id="run-3",
        dataset="churn",
        dataset_version=event.version,
        metrics={"roc_auc": 0.91, "accuracy": 0.85},
        gate_passed=True,
        correlation_id=event.correlation_id,
    )
    move = ModelPromoted(
        model_name="churn",
        version=3,
        previous_version=2,
        reason="auto",
        correlation_id=event.correlation_id,
    )
    return Outcome(trained, move if promoted else None)


async def _run(
    settings: TrainerSettings,
    event: DataIngested | list[DataIngested],
    fits: Fits,
    locks: FakeLocks | None = None,
    metrics: TrainerMetrics | None = None,
) -> tuple[FakeLedger, dict[str, list[Any]]]:
    ledger = FakeLedger()
    app = build_app(
        settings,
        ledger=ledger,
        board=FakeStatusBoard(),
        metrics=metrics,
        fits=fits,
        locks=locks or FakeLocks(),
    )
    broker = cast(RedisBroker, app.broker)
    seen = published(broker, "model-trained", "model-promoted")

    async with TestRedisBroker(broker, pel=NoPendingEntries()) as test_broker:
        for one in event if isinstance(event, list) else [event]:
            await test_broker.publish(one.model_dump_json(), stream="data-ingested")
    return ledger, seen


def _trainings(metrics: TrainerMetrics, outcome: str) -> float | None:
    labels = {"dataset": "churn", "outcome": outcome}
    return metrics.registry.get_sample_value("streamops_trainings_total", labels)


async def test_a_fit_yields_model_trained_and_model_promoted(
    settings: TrainerSettings, ingested: DataIngested
) -> None:
    fits = FakeFits(_outcome(ingested))
    locks = FakeLocks()
    ledger, seen = await _run(settings, ingested, fits, locks)
    (trained,) = seen["model-trained"]
    (promoted,) = seen["model-promoted"]
    assert (trained["model_version"], trained["correlation_id"]) == (3, ingested.correlation_id)
    assert (promoted["version"], promoted["previous_version"]) == (3, 2)
    # The planned state (the newest version, under the spec's fingerprint) is what was fitted,
    # under its lock, which is free again afterwards.
    (plan,) = fits.plans
    assert (plan.dataset, plan.version) == ("churn", 1)
    assert locks.released == [f"streamops:training:{plan.key}"]
    assert locks.owners == {}
    assert ledger.acked
    assert ledger.done == {ingested.event_id}


async def test_a_gate_failure_publishes_no_promotion(
    settings: TrainerSettings, ingested: DataIngested
) -> None:
    _, seen = await _run(settings, ingested, FakeFits(_outcome(ingested, promoted=False)))
    assert len(seen["model-trained"]) == 1
    assert seen["model-promoted"] == []


async def test_a_spec_without_training_is_nothing_to_train(
    settings: TrainerSettings, ingested: DataIngested, tmp_path: Path
) -> None:
    spec = yaml.safe_load((BUNDLED_DATASETS / "churn" / "spec.yaml").read_text())
    del spec["training"]
    (tmp_path / "specs" / "churn").mkdir(parents=True)
    (tmp_path / "specs" / "churn" / "spec.yaml").write_text(yaml.safe_dump(spec))
    common = settings.common.model_copy(update={"datasets_dir": tmp_path / "specs"})
    untrained = TrainerSettings(common=common, watch_s=0)
    metrics = TrainerMetrics()
    fits = FakeFits(_outcome(ingested))
    ledger, seen = await _run(untrained, ingested, fits, metrics=metrics)
    assert fits.plans == []
    assert seen == {"model-trained": [], "model-promoted": []}
    assert ledger.acked
    assert _trainings(metrics, "nothing_to_train") == 1


async def test_a_worker_with_nothing_to_train_publishes_nothing(
    settings: TrainerSettings, ingested: DataIngested
) -> None:
    metrics = TrainerMetrics()
    ledger, seen = await _run(settings, ingested, FakeFits(None), metrics=metrics)
    assert seen == {"model-trained": [], "model-promoted": []}
    assert ledger.acked
    assert _trainings(metrics, "nothing_to_train") == 1


async def test_a_state_locked_by_another_trainer_is_coalesced(
    settings: TrainerSettings, ingested: DataIngested
) -> None:
    store = FeatureStore(settings.common.feature_store_root)
    plan = plan_for(ingested, settings.common.datasets_dir, store)
    assert plan is not None
    locks = FakeLocks(owners={f"streamops:training:{plan.key}": "another-trainer"})
    fits = FakeFits(_outcome(ingested))
    metrics = TrainerMetrics()
    ledger, seen = await _run(settings, ingested, fits, locks, metrics)
    # The other trainer's own message covers this state: this one is acked, nothing fitted.
    assert fits.plans == []
    assert seen == {"model-trained": [], "model-promoted": []}
    assert ledger.acked
    assert locks.owners == {f"streamops:training:{plan.key}": "another-trainer"}
    assert _trainings(metrics, "coalesced") == 1


async def test_a_dead_worker_fails_the_message_and_replaces_the_pool(
    settings: TrainerSettings, ingested: DataIngested
) -> None:
    fits = FakeFits(BrokenProcessPool("a worker died"))
    locks = FakeLocks()
    metrics = TrainerMetrics()
    ledger, seen = await _run(settings, ingested, fits, locks, metrics)
    # Not acked: the message stays pending and is retried once its lease runs out.
    assert ledger.acked == []
    assert ledger.letters == []
    (error,) = ledger.errors.values()
    assert error.startswith("BrokenProcessPool")
    assert fits.replaced == 1
    assert locks.owners == {}  # released, so the retry can take it
    assert seen == {"model-trained": [], "model-promoted": []}
    assert _trainings(metrics, "worker_died") == 1


async def test_the_lock_is_renewed_while_the_fit_runs(
    make_settings: Make, ingested: DataIngested
) -> None:
    # The shortest lease allowed: renewals every third of it, a few while this fit waits.
    settings = TrainerSettings(common=make_settings(lease_ms=200).common, watch_s=0)
    locks = FakeLocks()

    async def until_renewed_twice() -> bool:
        return await eventually(lambda: _renewed(locks, 2), timeout=5, what="two renewals")

    fits = FakeFits(_outcome(ingested), while_fitting=until_renewed_twice)
    ledger, seen = await _run(settings, ingested, fits, locks)
    (plan,) = fits.plans
    assert set(locks.renewals) == {f"streamops:training:{plan.key}"}
    # Half the message lease: a dead trainer's lock is gone before its message can be
    # reclaimed, so the reclaim trains the state instead of coalescing it into nothing.
    assert set(locks.ttls) == {100}
    assert len(seen["model-trained"]) == 1
    assert ledger.acked


async def _renewed(locks: FakeLocks, times: int) -> bool:
    return len(locks.renewals) >= times


async def test_the_outcomes_are_counted(settings: TrainerSettings, ingested: DataIngested) -> None:
    metrics = TrainerMetrics()
    await _run(settings, ingested, FakeFits(_outcome(ingested)), metrics=metrics)
    value = metrics.registry.get_sample_value
    assert _trainings(metrics, "trained") == 1
    assert value("streamops_training_seconds_count", {"dataset": "churn"}) == 1
    assert value("streamops_gate_verdicts_total", {"model": "churn", "verdict": "passed"}) == 1
    assert value("streamops_model_newest_version", {"model": "churn"}) == 3
    roc_auc = {"model": "churn", "metric": "roc_auc"}
    assert value("streamops_model_holdout_metric", roc_auc) == 0.91
    assert value("streamops_promotions_total", {"model": "churn", "reason": "auto"}) == 1


def _ingest(make_settings: Make, dataset: str) -> DataIngested:
    ingestor_settings = make_settings()
    store = FeatureStore(ingestor_settings.common.feature_store_root)
    arrived = DataArrived(dataset=dataset, source=f"{dataset}/{dataset}.csv")
    event = ingest(arrived, ingestor_settings, store)
    assert isinstance(event, DataIngested)
    return event


async def test_the_bundled_entry_point_trains_through_the_handler(
    settings: TrainerSettings, make_settings: Make
) -> None:
    event = _ingest(make_settings, "rentals")
    # No STREAMOPS_TRAINER_PLUGINS_DIR: the datasets directory's plugins/ is the default.
    assert settings.plugins == BUNDLED_DATASETS / "plugins"
    registry = RecordingRegistry()
    store = FeatureStore(settings.common.feature_store_root)
    fits = InProcessFits(settings.common.datasets_dir, store, registry, settings.plugins)
    ledger, seen = await _run(settings, event, fits)
    (trained,) = seen["model-trained"]
    assert (trained["model_name"], trained["gate_passed"]) == ("rentals", True)
    assert len(seen["model-promoted"]) == 1
    (record,) = registry.records
    assert record.params["entry_point"] == "rentals_features:train"
    assert record.tags["streamops.entry_point"] == "rentals_features:train"
    # The module file goes with the model; its types are trusted as skops finds them.
    assert record.code_paths == (str(BUNDLED_DATASETS / "plugins" / "rentals_features.py"),)
    assert record.trusted_types is None
    assert ledger.done == {event.event_id}


BROKEN = {
    "import": ("raise ImportError('no module named lightgbm_nightly')\n", "cannot import"),
    "raise": (
        "def train(x, y, spec, **params):\n    raise ValueError('no rows like these')\n",
        "raised ValueError: no rows like these",
    ),
    "return": ("def train(x, y, spec, **params):\n    return {'not': 'a model'}\n", "not a model"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
async def test_a_failing_entry_point_fails_its_training_and_the_trainer_carries_on(
    settings: TrainerSettings, make_settings: Make, tmp_path: Path, kind: str
) -> None:
    code, words = BROKEN[kind]
    module = f"broken_{kind}_{tmp_path.name.replace('-', '_')}"  # one module per test
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / f"{module}.py").write_text(code)
    shutil.copy(BUNDLED_DATASETS / "plugins" / "rentals_features.py", plugins)
    specs = tmp_path / "specs"
    shutil.copytree(BUNDLED_DATASETS / "rentals", specs / "rentals")
    churn = yaml.safe_load((BUNDLED_DATASETS / "churn" / "spec.yaml").read_text())
    del churn["training"]["estimator"]
    churn["training"]["entry_point"] = f"{module}:train"
    (specs / "churn").mkdir()
    (specs / "churn" / "spec.yaml").write_text(yaml.safe_dump(churn))
    events = [_ingest(make_settings, "churn"), _ingest(make_settings, "rentals")]
    common = settings.common.model_copy(update={"datasets_dir": specs})
    trainer_settings = TrainerSettings(common=common, watch_s=0, plugins_dir=plugins)
    store = FeatureStore(common.feature_store_root)
    fits = InProcessFits(specs, store, RecordingRegistry(), trainer_settings.plugins)

    ledger, seen = await _run(trainer_settings, events, fits)
    # The broken training is dead-lettered at once, with the reason...
    (letter,) = ledger.letters
    assert letter["reason"].startswith(f"InvalidTrainingSpec: entry point {module}:train")
    assert words in letter["reason"]
    assert letter["deliveries"] == 1
    # ...and the next event is trained as usual.
    assert [e["dataset"] for e in seen["model-trained"]] == ["rentals"]
