"""Serving, free of any transport: keep the production models loaded, swap on promotion,
predict whole batches in one call."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from predictor.cache import ModelCache, Served
from predictor.drift import DriftMonitor
from predictor.loader import load
from shared.datasets import DatasetSpec, feature_frame
from shared.errors import NoModelInService
from shared.events import ModelPromoted
from shared.registry import Registry

log = logging.getLogger(__name__)
PRODUCTION = "production"
# Pinned versions kept loaded per replica beyond the live and previous ones.
PINNED_KEPT = 2


@dataclass(frozen=True)
class Prediction:
    model_name: str
    model_version: int
    predictions: list[Any]
    probabilities: list[list[float]] | None
    classes: tuple[Any, ...] | None


class Predictor:
    """The models named by `specs` (by registered model name), in `cache`."""

    def __init__(
        self,
        registry: Registry,
        specs: dict[str, DatasetSpec],
        cache: ModelCache,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.registry = registry
        self.specs = specs
        self.cache = cache
        # Online rows are counted against the training reference (batch jobs are not: one big
        # file would swamp the window that watches live traffic).
        self.drift = drift
        # Versions loaded for batch jobs pinned to a version no longer live nor previous.
        self._pinned: dict[tuple[str, int], Served] = {}
        # Candidates loaded ahead of their promotion (one per model), so a promotion is a swap.
        self._staged: dict[str, Served] = {}
        # One load at a time per version: a promotion arriving while its version is being
        # prefetched waits for that load instead of doing it again.
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self._loading_guard = threading.Lock()

    def stale(self) -> list[tuple[str, int]]:
        """(model, version) pairs where the registry's `production` alias names a version that
        is not in service here: at start, and periodically, so a replica that missed an event
        catches up."""
        wanted = ((name, self.registry.alias(name, PRODUCTION)) for name in self.specs)
        return [(n, v) for n, v in wanted if v is not None and v != self.cache.version(n)]

    def converge(self) -> list[Served]:
        """Load every stale version (ModelLoadFailed stops at the first that fails)."""
        return [self.swap_in(name, version) for name, version in self.stale()]

    def wants(self, event: ModelPromoted) -> bool:
        """Whether a promotion concerns this replica and changes what it serves."""
        return (
            event.model_name in self.specs
            and event.alias == PRODUCTION
            and self.cache.version(event.model_name) != event.version
        )

    def promoted(self, event: ModelPromoted) -> Served | None:
        """Swap in the promoted version (ModelLoadFailed leaves the old one serving)."""
        if not self.wants(event):
            return None
        return self.swap_in(event.model_name, event.version)

    def predict(
        self, name: str, rows: pd.DataFrame, columns: Mapping[str, Any] | None = None
    ) -> Prediction:
        """One call for the whole batch; the model is taken once, so a swap in the middle does
        not split a batch between versions. The rows are counted for drift, from `columns`
        (the same rows as plain lists, cheaper to bin) when given."""
        served = self.cache.get(name)
        features = feature_frame(self.specs[name], rows)
        prediction = predict_with(served, features)
        if self.drift is not None:
            self.drift.observe(served, features if columns is None else columns)
        return prediction

    def model_for(self, name: str, version: int) -> Served:
        """Version `version` of `name`, for a batch job pinned to it: the live one, the
        previous one, the staged candidate, or loaded here (the last two such loads are kept).
        Blocking: call from a thread. NoModelInService when this replica does not serve
        `name`; ModelLoadFailed."""
        spec = self.specs.get(name)
        if spec is None:
            raise NoModelInService(f"this replica does not serve model {name!r}")
        # Taken once: a swap between a check and a get could hand out another version.
        live = self.cache.get(name) if self.cache.version(name) is not None else None
        if live is not None and live.version == version:
            return live
        previous = self.cache.previous(name)
        if previous is not None and previous.version == version:
            return previous
        staged = self._staged.get(name)
        if staged is not None and staged.version == version:
            return staged
        with self._lock_for(name, version):  # one load per version, whoever asks
            served = self._pinned.get((name, version))
            if served is None:
                served = load(self.registry, spec, version)
                kept = list(self._pinned.items())[-(PINNED_KEPT - 1) :]
                self._pinned = {**dict(kept), (name, version): served}
            return served

    def stage(self, name: str, version: int) -> Served | None:
        """Load a candidate (a version just trained) ahead of its promotion; None when it is
        already in service or staged."""
        with self._lock_for(name, version):
            staged = self._staged.get(name)
            if self.cache.version(name) == version or (staged and staged.version == version):
                return None
            served = load(self.registry, self.specs[name], version)
            self._staged = {**self._staged, name: served}
            return served

    def swap_in(self, name: str, version: int) -> Served:
        """Put `version` in service: the staged candidate or the previous version if it is
        one of those (instant), else loaded, checked and warmed up now."""
        with self._lock_for(name, version):
            staged = self._staged.get(name)
            previous = self.cache.previous(name)
            if staged is not None and staged.version == version:
                served = staged
                self._staged = {k: v for k, v in self._staged.items() if k != name}
            elif previous is not None and previous.version == version:
                served = previous  # a rollback: still loaded
            else:
                served = load(self.registry, self.specs[name], version)
            old = self.cache.swap(served)
        log.info("%s: serving v%d (was %s)", name, version, f"v{old.version}" if old else "nothing")
        return served

    def _lock_for(self, name: str, version: int) -> threading.Lock:
        with self._loading_guard:
            return self._loading.setdefault((name, version), threading.Lock())


def predict_with(served: Served, features: pd.DataFrame) -> Prediction:
    """For a classifier with probabilities, one predict_proba call: the prediction is the most
    probable class, as scikit-learn's own predict does, so the work is not done twice."""
    model = served.model
    if served.classes is not None and hasattr(model, "predict_proba"):
        proba = model.predict_proba(features)
        predictions = np.asarray(served.classes).take(proba.argmax(axis=1))
        return Prediction(
            served.name, served.version, predictions.tolist(), proba.tolist(), served.classes
        )
    predictions = model.predict(features)
    return Prediction(served.name, served.version, predictions.tolist(), None, served.classes)
