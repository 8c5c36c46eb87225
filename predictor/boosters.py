"""A LightGBM `Booster` (the native API's model, not the scikit-learn wrapper) trained with a
classification objective answers probabilities from `predict`, with no class labels: served
as a classifier over classes 0..k-1, so it answers like an LGBMClassifier."""

from __future__ import annotations

from typing import Any

import numpy as np

BINARY = frozenset({"binary"})
MULTICLASS = frozenset({"multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr"})


class BoosterClassifier:
    """predict_proba and classes_ over a classification Booster."""

    def __init__(self, booster: Any, classes: tuple[int, ...]) -> None:
        self.booster = booster
        self.classes_ = np.asarray(classes)

    def predict_proba(self, frame: Any) -> np.ndarray[Any, Any]:
        raw = np.asarray(self.booster.predict(frame))
        if raw.ndim == 1:  # binary: the probability of class 1
            return np.column_stack([1.0 - raw, raw])
        return raw

    def predict(self, frame: Any) -> np.ndarray[Any, Any]:
        predicted: np.ndarray[Any, Any] = self.classes_.take(
            self.predict_proba(frame).argmax(axis=1)
        )
        return predicted


def as_classifier(model: Any) -> Any:
    """`model` as a classifier when it is a classification Booster; else `model` itself."""
    kind = type(model)
    if kind.__name__ != "Booster" or not kind.__module__.startswith("lightgbm"):
        return model
    params = getattr(model, "params", None) or {}
    objective = str(params.get("objective") or "").split(" ")[0]
    if objective in BINARY:
        return BoosterClassifier(model, (0, 1))
    if objective in MULTICLASS:
        return BoosterClassifier(model, tuple(range(int(params.get("num_class", 1)))))
    return model
