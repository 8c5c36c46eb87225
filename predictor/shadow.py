"""Shadowing (docs/rollout.md): a model's challenger predicts a sample of its online requests,
after production's answers are on their way, and never answers a client.

The sample is drawn by request id (`predlog.sampled`), as the prediction log's is: every row
of a request is in or out, and every replica draws the same. What the challenger said goes to
the prediction log (records with `source` shadow, no features: production's records of the
same rows have them), and its agreement with production to the metrics.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from predictor.outputs import Prediction
from predictor.predlog import online_entry
from shared.drift import decile_psi
from shared.events import BatchPredicted, Lineage, PredictionRequested, PredictionsLogged


@dataclass(frozen=True)
class Compared:
    """A challenger's answers against production's, on the same rows."""

    rows: int
    agreeing: int  # the same label (classifiers)
    difference: float  # the sum of |challenger - production| (regressors; 0 for classifiers)


def sample_of(
    requests: Sequence[PredictionRequested], answers: Sequence[BatchPredicted], share: float
) -> PredictionsLogged | None:
    """Production's answers to the sampled requests, with their features (the rows the
    challenger is to predict); None when no request was drawn, or none was answered."""
    return online_entry(
        requests, answers, Lineage(), replica="", latency_ms=0.0, sample=share, features=True
    )


def compare(production: Sequence[Any], challenger: Sequence[Any]) -> Compared:
    """Labels compared as text (as labels are judged: shared/labels.py); values that are all
    floats (a regressor's) by their distance."""
    if production and all(isinstance(p, float) for p in production):
        difference = math.fsum(
            abs(float(c) - float(p)) for p, c in zip(production, challenger, strict=True)
        )
        return Compared(len(production), 0, difference)
    agreeing = sum(str(p) == str(c) for p, c in zip(production, challenger, strict=True))
    return Compared(len(production), agreeing, 0.0)


# The latest paired scores a replica keeps per pair of versions, and the fewest it judges.
KEPT_SCORES = 5_000
MIN_SCORES = 50


def scores(predictions: Sequence[Any], probabilities: Sequence[Sequence[float]] | None) -> Any:
    """One score per row: a classifier's probability of its last class (the positive one, of
    two), a regressor's value; None when the answers have neither."""
    if probabilities:
        return np.asarray(probabilities, dtype=float)[:, -1]
    if predictions and all(isinstance(p, float) for p in predictions):
        return np.asarray(predictions, dtype=float)
    return None


@dataclass
class ScoreWindow:
    """The latest scores production and a challenger gave the same rows, and the PSI between
    them (in production's deciles, as the guard compares predictions)."""

    champion: deque[float] = field(default_factory=lambda: deque(maxlen=KEPT_SCORES))
    challenger: deque[float] = field(default_factory=lambda: deque(maxlen=KEPT_SCORES))

    def add(self, champion: Any, challenger: Any) -> None:
        self.champion.extend(champion)
        self.challenger.extend(challenger)

    def psi(self) -> float | None:
        if len(self.champion) < MIN_SCORES:
            return None
        before = np.fromiter(self.champion, float)
        after = np.fromiter(self.challenger, float)
        keep = ~(np.isnan(before) | np.isnan(after))
        if keep.sum() < MIN_SCORES:
            return None
        return decile_psi(before[keep], after[keep])


def shadow_entry(
    sample: PredictionsLogged,
    prediction: Prediction,
    lineage: Lineage,
    *,
    replica: str,
    latency_ms: float,
) -> PredictionsLogged:
    """The challenger's records of the sampled rows, for the prediction log."""
    classes = None if prediction.classes is None else np.asarray(prediction.classes).tolist()
    return sample.model_copy(
        update={
            "model_version": prediction.model_version,
            "replica": replica,
            "latency_ms": latency_ms,
            "features": None,
            "predictions": prediction.predictions,
            "probabilities": prediction.probabilities,
            "classes": classes,  # plain values: a model's classes_ are numpy scalars
            "lineage": lineage,
            "shadow": True,
        }
    )
