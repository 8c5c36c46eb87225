"""Logging a training to MLflow: the run, its lineage, and the model registered as a version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Each feature's training distribution (shared/drift.py), an artifact of the version's run.
DRIFT_ARTIFACT = "drift_reference.json"


@dataclass(frozen=True)
class TrainingRecord:
    """What one training logs: the run, the model and the lineage."""

    experiment: str
    model_name: str
    model: Any
    params: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    input_frame: Any  # pandas DataFrame of the training rows (for lineage and schema)
    input_name: str
    input_source: str
    input_digest: str
    target: str
    example: Any  # a few feature rows
    trusted_types: tuple[str, ...]
    # Each feature's training distribution (shared/drift.py), logged beside the model.
    drift_reference: dict[str, Any] | None = None


def log_training(client: Any, record: TrainingRecord) -> tuple[int, str]:
    """Log `record` as a run of its experiment and register its model; the version registered
    and the run's id. Runs are logged with
    MLflow's fluent API, so the process must have called `mlflow.set_tracking_uri` (the
    trainer's worker does)."""
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import infer_signature

    mlflow.set_experiment(record.experiment)
    with mlflow.start_run(run_name=record.input_name) as run:
        mlflow.log_params(record.params)
        mlflow.log_metrics(record.metrics)
        mlflow.set_tags(record.tags)
        dataset = from_pandas(
            record.input_frame,
            source=record.input_source,
            name=record.input_name,
            targets=record.target,
            digest=record.input_digest[:36],
        )
        mlflow.log_input(dataset, context="training")
        if record.drift_reference is not None:
            mlflow.log_dict(record.drift_reference, DRIFT_ARTIFACT)
        signature = infer_signature(record.example, record.model.predict(record.example))
        info = mlflow.sklearn.log_model(
            record.model,
            name="model",
            signature=signature,
            input_example=record.example,
            registered_model_name=record.model_name,
            skops_trusted_types=list(record.trusted_types),
            # Given, not inferred: inferring them loads the model in a subprocess, which
            # took 40 to 90 s of every training here.
            pip_requirements=_requirements(),
        )
    version = int(info.registered_model_version)
    for key, value in record.tags.items():
        client.set_model_version_tag(record.model_name, str(version), key, value)
    return version, run.info.run_id


def _requirements() -> list[str]:
    """What loading a logged pipeline needs, at the versions that trained it."""
    from importlib.metadata import version

    packages = ("scikit-learn", "skops", "numpy", "pandas", "scipy")
    return [f"{name}=={version(name)}" for name in packages]
