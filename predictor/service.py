"""Serving, free of any transport: keep the production models loaded, swap on promotion,
predict whole batches in one call."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from predictor.cache import ModelCache, Served
from predictor.loader import load
from shared.datasets import DatasetSpec, feature_frame
from shared.events import ModelPromoted
from shared.registry import Registry

log = logging.getLogger(__name__)
PRODUCTION = "production"


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
        self, registry: Registry, specs: dict[str, DatasetSpec], cache: ModelCache
    ) -> None:
        self.registry = registry
        self.specs = specs
        self.cache = cache

    def converge(self) -> list[Served]:
        """Load whatever the registry's `production` alias names and is not in service yet:
        at start, and periodically, so a replica that missed an event catches up."""
        swapped = []
        for name, spec in self.specs.items():
            version = self.registry.alias(name, PRODUCTION)
            if version is not None and version != self.cache.version(name):
                swapped.append(self._swap_in(spec, version))
        return swapped

    def promoted(self, event: ModelPromoted) -> Served | None:
        """Swap in the promoted version (ModelLoadFailed leaves the old one serving)."""
        spec = self.specs.get(event.model_name)
        if spec is None or event.alias != PRODUCTION:
            return None
        if self.cache.version(event.model_name) == event.version:
            return None
        return self._swap_in(spec, event.version)

    def predict(self, name: str, rows: pd.DataFrame) -> Prediction:
        """One call for the whole batch; the model is taken once, so a swap in the middle does
        not split a batch between versions."""
        served = self.cache.get(name)
        features = feature_frame(self.specs[name], rows)
        predictions = served.model.predict(features)
        probabilities = None
        if served.classes is not None and hasattr(served.model, "predict_proba"):
            probabilities = served.model.predict_proba(features).tolist()
        return Prediction(name, served.version, predictions.tolist(), probabilities, served.classes)

    def _swap_in(self, spec: DatasetSpec, version: int) -> Served:
        served = load(self.registry, spec, version)
        old = self.cache.swap(served)
        log.info(
            "%s: serving v%d (was %s)",
            spec.model_name,
            version,
            f"v{old.version}" if old else "nothing",
        )
        return served
