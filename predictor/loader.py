"""Loading a model version for service: load it under the trust policy, find its input schema
(the dataset spec's, else its MLflow signature's), check it, choose its runtime (compiled or
native: predictor/runtimes.py), warm it up."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from predictor.boosters import as_classifier
from predictor.cache import Served
from predictor.outputs import gives_probabilities, predict_with
from predictor.runtimes import choose
from shared.datasets import DatasetSpec, spec_schema
from shared.drift import DriftReference
from shared.errors import ModelLoadFailed, ModelRefused
from shared.model_loading import LoadedModel, LoadPolicy
from shared.registry import ServingRegistry, lineage_of
from shared.schema import Column, ModelSchema, UnservableSignature, from_signature, input_frame

log = logging.getLogger(__name__)
WARM_ROWS = 8


def example_value(col: Column) -> Any:
    """A valid value of `col` from its constraints alone (lower bound, first allowed value)."""
    if col.allowed:
        return col.allowed[0]
    if col.type in ("float", "int"):
        low = col.ge if col.ge is not None else (col.gt + 1 if col.gt is not None else 0)
        return float(low) if col.type == "float" else int(low)
    if col.type == "bool":
        return False
    if col.type == "str":
        return "x" * max(1, col.min_length or 1)
    return pd.Timestamp("2024-01-01", tz="UTC")


def example_frame(source: ModelSchema | DatasetSpec, rows: int = WARM_ROWS) -> pd.DataFrame:
    """Valid rows built from a schema's (or a spec's) columns alone, to warm up."""
    row = {col.name: example_value(col) for col in source.columns}
    return pd.DataFrame([row] * rows)


def warm_rows(schema: ModelSchema, example: Any) -> pd.DataFrame:
    """The input example logged with the model when it has every column, else rows built
    from the schema."""
    if isinstance(example, pd.DataFrame) and set(schema.names) <= set(example.columns):
        return example.head(WARM_ROWS)
    return example_frame(schema)


def schema_of(name: str, spec: DatasetSpec | None, loaded: LoadedModel) -> ModelSchema:
    """A dataset spec's feature columns when one names this model (its constraints apply),
    else the signature's columns; ModelRefused when there is neither."""
    if spec is not None:
        return spec_schema(spec)
    try:
        return from_signature(name, loaded.signature)
    except UnservableSignature as exc:
        raise ModelRefused(f"{exc}") from exc


def load(
    registry: ServingRegistry,
    name: str,
    version: int,
    spec: DatasetSpec | None,
    policy: LoadPolicy,
    *,
    threads: int = 1,
) -> Served:
    """The model version, ready to serve; ModelLoadFailed says why it is not (ModelRefused:
    it never will be, as it is)."""
    try:
        loaded = registry.load_model(name, version, policy)
        schema = schema_of(name, spec, loaded)
    except ModelRefused as exc:
        raise ModelRefused(f"{name} v{version}: refused: {exc}") from exc
    except Exception as exc:
        raise ModelLoadFailed(f"{name} v{version}: cannot load: {exc}") from exc
    model = as_classifier(loaded.model) if loaded.flavor == "lightgbm" else loaded.model
    check_columns(name, version, model, schema)
    classes = tuple(model.classes_) if gives_probabilities(model) else None
    drift = drift_reference(registry, name, version)
    lineage = lineage_of(loaded.run_id, loaded.tags)
    served = Served(
        name,
        version,
        model,
        schema,
        classes,
        datetime.now(UTC),
        drift,
        loaded.flavor,
        lineage=lineage,
    )
    try:
        rows = input_frame(schema, warm_rows(schema, loaded.example))
        # The very path requests take, answer shape included.
        predict_with(served, rows)
    except Exception as exc:
        # The same rows would fail the same way at every converge: refused for good.
        raise ModelRefused(f"{name} v{version}: warm-up prediction failed: {exc}") from exc
    runtime = choose(loaded, model, schema, rows, classes, wanted=policy.compiled, threads=threads)
    log.info("%s v%d: served by %s: %s", name, version, runtime.name, runtime.verdict)
    if runtime.model is model:
        return replace(served, runtime=runtime.name, verdict=runtime.verdict)
    compiled = replace(served, model=runtime.model, runtime=runtime.name, verdict=runtime.verdict)
    try:
        predict_with(compiled, rows)  # checked against the native answers already: warms it up
    except Exception as exc:
        log.warning("%s v%d: the compiled model failed its warm-up; native: %s", name, version, exc)
        return replace(served, runtime="native", verdict=f"refused: warm-up failed: {exc}")
    return compiled


def check_columns(name: str, version: int, model: Any, schema: ModelSchema) -> None:
    expected = getattr(model, "feature_names_in_", None)
    if expected is not None and set(expected) != set(schema.names):
        given = "the dataset spec" if schema.source == "spec" else "its signature"
        raise ModelRefused(
            f"{name} v{version} expects columns {sorted(expected)}, {given} gives "
            f"{sorted(schema.names)}"
        )


def drift_reference(registry: ServingRegistry, name: str, version: int) -> DriftReference | None:
    """The version's training reference; None (and a warning) when it has none or it cannot be
    read: no reason to refuse a model that predicts well."""
    try:
        raw = registry.drift_reference(name, version)
        return None if raw is None else DriftReference.model_validate(raw)
    except Exception as exc:
        log.warning("%s v%d: no drift reference, drift not measured: %s", name, version, exc)
        return None
