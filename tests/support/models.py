"""Models registered straight into MLflow (no trainer), and rows to score with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shared.datasets import DatasetSpec, feature_frame
from trainer.estimators import resolve
from trainer.training import pipeline

PLANS = np.array(["basic", "standard", "premium"])


def churn_features(rows: int, seed: int = 1) -> pd.DataFrame:
    """Valid churn rows (features and label), vectorised: 100,000 rows in milliseconds."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 120, rows)
    charges = np.round(20 + rng.gamma(2.0, 20.0, rows), 2)
    calls = rng.poisson(1.5, rows)
    satisfaction = np.round(np.clip(rng.normal(3.6, 0.9, rows), 1, 5), 1)
    satisfaction[rng.random(rows) < 0.2] = np.nan
    logit = 0.8 - 0.035 * tenure + 0.018 * (charges - 60) + 0.35 * calls
    return pd.DataFrame(
        {
            "tenure_months": tenure,
            "monthly_charges": charges,
            "support_calls": calls,
            "usage_gb": np.round(rng.lognormal(2.0, 0.8, rows), 3),
            "satisfaction": satisfaction,
            "plan": PLANS[rng.integers(0, 3, rows)],
            "autopay": rng.random(rows) < 0.55,
            "churned": (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int),
        }
    )


def write_parquet(path: Path, frame: pd.DataFrame, row_group_size: int = 10_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def fit_model(spec: DatasetSpec, frame: pd.DataFrame) -> Any:
    """The spec's pipeline, fitted on all of `frame` (no split, no gate: tests only)."""
    model = pipeline(spec)
    model.fit(feature_frame(spec, frame), frame[spec.target])
    return model


def register(mlflow_url: str, spec: DatasetSpec, model: Any, production: bool = True) -> int:
    """Log `model` under the spec's model name (and make it production): its version."""
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient

    assert spec.training is not None
    trusted = resolve(spec.training.estimator, spec.training.task).trusted_types
    mlflow.set_tracking_uri(mlflow_url)
    mlflow.set_experiment(spec.model_name)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=spec.model_name,
            skops_trusted_types=list(trusted),
            # Given, not inferred: inference loads the model in a subprocess (over a minute).
            pip_requirements=["scikit-learn"],
        )
    version = int(info.registered_model_version)
    if production:
        client = MlflowClient(tracking_uri=mlflow_url)
        client.set_registered_model_alias(spec.model_name, "production", str(version))
    return version


def in_process_predictions(model: Any, spec: DatasetSpec, path: Path) -> list[Any]:
    """What the model predicts for the file's rows, in one call in this process."""
    frame = pq.read_table(path).to_pandas()
    return list(model.predict(feature_frame(spec, frame)))
