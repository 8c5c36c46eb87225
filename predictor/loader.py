"""Loading a model version for service: load, check against the dataset spec, warm up."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from predictor.cache import Served
from shared.datasets import DatasetSpec, feature_frame
from shared.drift import DriftReference
from shared.errors import ModelLoadFailed
from shared.registry import Registry

log = logging.getLogger(__name__)


def example_frame(spec: DatasetSpec, rows: int = 8) -> pd.DataFrame:
    """Valid rows built from the spec alone (lower bounds, first allowed value), to warm up."""
    row: dict[str, Any] = {}
    for col in spec.columns:
        if col.allowed:
            value: Any = col.allowed[0]
        elif col.type in ("float", "int"):
            low = col.ge if col.ge is not None else (col.gt + 1 if col.gt is not None else 0)
            value = float(low) if col.type == "float" else int(low)
        elif col.type == "bool":
            value = False
        elif col.type == "str":
            value = "x" * max(1, col.min_length or 1)
        else:
            value = pd.Timestamp("2024-01-01", tz="UTC")
        row[col.name] = value
    return pd.DataFrame([row] * rows)


def load(registry: Registry, spec: DatasetSpec, version: int) -> Served:
    """The model version, ready to serve; ModelLoadFailed says why it is not."""
    name = spec.model_name
    try:
        model = registry.load(name, version)
    except Exception as exc:
        raise ModelLoadFailed(f"{name} v{version}: cannot load: {exc}") from exc
    features = tuple(c.name for c in spec.feature_columns)
    expected = getattr(model, "feature_names_in_", None)
    if expected is not None and set(expected) != set(features):
        raise ModelLoadFailed(
            f"{name} v{version} expects columns {sorted(expected)}, the dataset spec gives "
            f"{sorted(features)}"
        )
    try:
        warm = feature_frame(spec, example_frame(spec))
        model.predict(warm)
        if hasattr(model, "predict_proba"):
            model.predict_proba(warm)
    except Exception as exc:
        raise ModelLoadFailed(f"{name} v{version}: warm-up prediction failed: {exc}") from exc
    classes = tuple(model.classes_) if hasattr(model, "classes_") else None
    drift = drift_reference(registry, name, version)
    return Served(name, version, model, features, classes, datetime.now(UTC), drift)


def drift_reference(registry: Registry, name: str, version: int) -> DriftReference | None:
    """The version's training reference; None (and a warning) when it has none or it cannot be
    read: no reason to refuse a model that predicts well."""
    try:
        raw = registry.drift_reference(name, version)
        return None if raw is None else DriftReference.model_validate(raw)
    except Exception as exc:
        log.warning("%s v%d: no drift reference, drift not measured: %s", name, version, exc)
        return None
