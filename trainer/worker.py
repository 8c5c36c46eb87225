"""Training in worker processes: the service's event loop stays free for leases and health.

A fit can take minutes and holds the GIL in places; run in the service process it would stall
lease renewals and make a live trainer look dead. Workers are spawned (not forked: no copy of
the event loop or the Redis connections) and die with their parent (PR_SET_PDEATHSIG), so a
`kill -9` of the trainer cannot leave an orphan that registers a model behind its back.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from shared.errors import ConfigError, InvalidTrainingSpec
from shared.events import DataIngested, ModelPromoted, ModelTrained
from shared.settings import TrainerSettings
from trainer.service import Outcome, Plan, train_for

if TYPE_CHECKING:
    from shared.feature_store import FeatureStore
    from shared.registry import TrainingRegistry

_PR_SET_PDEATHSIG = 1
_state: dict[str, object] = {}


@dataclass(frozen=True)
class Setup:
    """What a worker process needs to know, pickled to it once when it starts."""

    tracking_uri: str
    feature_store_location: str
    datasets_dir: str
    log_level: str
    plugins_dir: str | None = None

    @classmethod
    def of(cls, settings: TrainerSettings) -> Setup:
        common = settings.common
        plugins = settings.plugins
        return cls(
            common.mlflow_tracking_uri,
            common.feature_store_location,
            str(common.datasets_dir),
            common.log_level,
            str(plugins) if plugins else None,
        )


def _init(parent: int, setup: Setup) -> None:
    if sys.platform == "linux":
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died while this process was still starting, before the line above:
    # then no signal will ever come (measured: a kill -9 within a second of the first fit
    # left an orphan fitting on). Leave now instead.
    if os.getppid() != parent:
        os._exit(1)
    import mlflow

    from shared.feature_store import FeatureStore
    from shared.registry import MlflowRegistry
    from shared.telemetry import configure_logging
    from trainer.entry_points import on_import_path

    configure_logging(setup.log_level)
    mlflow.set_tracking_uri(setup.tracking_uri)  # this process only exists to log to it
    _state["registry"] = MlflowRegistry(setup.tracking_uri)
    _state["store"] = FeatureStore(setup.feature_store_location)
    _state["datasets_dir"] = Path(setup.datasets_dir)
    # A spawned process starts with a fresh sys.path: entry points (and the custom classes in
    # the models they return) are imported from the plugins directory here too.
    plugins = Path(setup.plugins_dir) if setup.plugins_dir else None
    _state["plugins_dir"] = plugins
    on_import_path(plugins)


def train_in_worker(event_json: str, plan: Plan) -> tuple[str, str | None] | None:
    """Runs in a worker: the events to publish, as JSON (None when there is nothing to train).
    The plan was made (and locked) by the service: the worker trains exactly that state."""
    from shared.feature_store import FeatureStore
    from shared.registry import MlflowRegistry

    event = DataIngested.model_validate_json(event_json)
    outcome = run_training(
        event,
        plan,
        cast(Path, _state["datasets_dir"]),
        cast(FeatureStore, _state["store"]),
        cast(MlflowRegistry, _state["registry"]),
        plugins_dir=cast(Path | None, _state.get("plugins_dir")),
    )
    if outcome is None:
        return None
    promoted = outcome.promoted.model_dump_json() if outcome.promoted else None
    return outcome.trained.model_dump_json(), promoted


def run_training(
    event: DataIngested,
    plan: Plan,
    datasets_dir: Path,
    store: FeatureStore,
    registry: TrainingRegistry,
    *,
    plugins_dir: Path | None,
) -> Outcome | None:
    """`train_for`, with what cannot succeed on a retry (a bad spec, a failing entry point) as
    InvalidTrainingSpec: the message is dead-lettered with the reason, and the worker (and the
    service) carry on. The reason is text, so that any exception of the user's crosses back to
    the service whether it pickles or not."""
    try:
        return train_for(event, datasets_dir, store, registry, plan, plugins_dir=plugins_dir)
    except ConfigError as exc:
        raise InvalidTrainingSpec(str(exc)) from None


def pool(settings: TrainerSettings) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=settings.workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init,
        initargs=(os.getpid(), Setup.of(settings)),
    )


def decode(result: tuple[str, str | None]) -> tuple[ModelTrained, ModelPromoted | None]:
    trained = ModelTrained.model_validate_json(result[0])
    promoted = ModelPromoted.model_validate_json(result[1]) if result[1] else None
    return trained, promoted
