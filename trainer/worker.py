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
from pathlib import Path
from typing import cast

from shared.errors import ConfigError, InvalidTrainingSpec
from shared.events import DataIngested, ModelPromoted, ModelTrained
from trainer.service import Plan, train_for

_PR_SET_PDEATHSIG = 1
_state: dict[str, object] = {}


def _init(
    parent: int, tracking_uri: str, feature_store_root: str, datasets_dir: str, log_level: str
) -> None:
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

    configure_logging(log_level)
    mlflow.set_tracking_uri(tracking_uri)  # this process only exists to log to it
    _state["registry"] = MlflowRegistry(tracking_uri)
    _state["store"] = FeatureStore(Path(feature_store_root))
    _state["datasets_dir"] = Path(datasets_dir)


def train_in_worker(event_json: str, plan: Plan) -> tuple[str, str | None] | None:
    """Runs in a worker: the events to publish, as JSON (None when there is nothing to train).
    The plan was made (and locked) by the service: the worker trains exactly that state."""
    from shared.feature_store import FeatureStore
    from shared.registry import MlflowRegistry

    event = DataIngested.model_validate_json(event_json)
    store = cast(FeatureStore, _state["store"])
    registry = cast(MlflowRegistry, _state["registry"])
    datasets_dir = cast(Path, _state["datasets_dir"])
    try:
        outcome = train_for(event, datasets_dir, store, registry, plan)
    except ConfigError as exc:
        raise InvalidTrainingSpec(str(exc)) from None
    if outcome is None:
        return None
    promoted = outcome.promoted.model_dump_json() if outcome.promoted else None
    return outcome.trained.model_dump_json(), promoted


def pool(
    workers: int, tracking_uri: str, feature_store_root: Path, datasets_dir: Path, log_level: str
) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init,
        initargs=(os.getpid(), tracking_uri, str(feature_store_root), str(datasets_dir), log_level),
    )


def decode(result: tuple[str, str | None]) -> tuple[ModelTrained, ModelPromoted | None]:
    trained = ModelTrained.model_validate_json(result[0])
    promoted = ModelPromoted.model_validate_json(result[1]) if result[1] else None
    return trained, promoted
