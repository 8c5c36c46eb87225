"""The model registry port and its MLflow adapter (aliases, not the deprecated stages)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

TAG = "streamops."
HISTORY_TAG = f"{TAG}production_history"
# Each feature's training distribution (shared/drift.py), an artifact of the version's run.
DRIFT_ARTIFACT = "drift_reference.json"


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version as streamops sees it."""

    name: str
    version: int
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


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


class Registry(Protocol):
    def find(self, name: str, tag: str, value: str) -> RegisteredVersion | None: ...

    def log(self, record: TrainingRecord) -> RegisteredVersion: ...

    def alias(self, name: str, alias: str) -> int | None: ...

    def set_alias(self, name: str, alias: str, version: int) -> None: ...

    def load(self, name: str, version: int) -> Any: ...

    def drift_reference(self, name: str, version: int) -> dict[str, Any] | None: ...

    def history(self, name: str) -> list[int]: ...

    def set_history(self, name: str, versions: list[int]) -> None: ...

    def versions(self, name: str) -> list[RegisteredVersion]: ...

    def aliases(self, name: str) -> dict[str, int]: ...

    def model_names(self) -> list[str]: ...


class MlflowRegistry:
    """The Registry on an MLflow tracking server. Runs are logged with MLflow's fluent API,
    so the process must have called `mlflow.set_tracking_uri` (the trainer's worker does)."""

    def __init__(self, tracking_uri: str) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def find(self, name: str, tag: str, value: str) -> RegisteredVersion | None:
        found = self.client.search_model_versions(
            f"name = '{_quote(name)}' and tags.`{tag}` = '{_quote(value)}'"
        )
        if not found:
            return None
        return self._describe(min(found, key=lambda mv: int(mv.version)))

    def log(self, record: TrainingRecord) -> RegisteredVersion:
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
            self.client.set_model_version_tag(record.model_name, str(version), key, value)
        return RegisteredVersion(
            record.model_name, version, run.info.run_id, dict(record.tags), dict(record.metrics)
        )

    def alias(self, name: str, alias: str) -> int | None:
        from mlflow.exceptions import MlflowException

        try:
            return int(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def load(self, name: str, version: int) -> Any:
        # Through this registry's server, not MLflow's global tracking URI (which a service
        # configured with STREAMOPS_MLFLOW_TRACKING_URI alone never sets): `models:/...`
        # would silently look in a local ./mlflow.db instead.
        import mlflow.artifacts
        import mlflow.sklearn

        uri = self.client.get_model_version_download_uri(name, str(version))
        with tempfile.TemporaryDirectory(prefix="streamops-model-") as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=tmp, tracking_uri=self.tracking_uri
            )
            return mlflow.sklearn.load_model(local)

    def drift_reference(self, name: str, version: int) -> dict[str, Any] | None:
        """The reference logged with the version's run; None when there is none (a version
        registered outside streamops, or before drift existed)."""
        run_id = self.client.get_model_version(name, str(version)).run_id
        if not run_id:
            return None
        if DRIFT_ARTIFACT not in {f.path for f in self.client.list_artifacts(run_id)}:
            return None
        with tempfile.TemporaryDirectory(prefix="streamops-drift-") as tmp:
            local = self.client.download_artifacts(run_id, DRIFT_ARTIFACT, dst_path=tmp)
            found: dict[str, Any] = json.loads(Path(local).read_text())
        return found

    def history(self, name: str) -> list[int]:
        tags = self.client.get_registered_model(name).tags
        return [int(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]

    def set_history(self, name: str, versions: list[int]) -> None:
        self.client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(versions))

    def versions(self, name: str) -> list[RegisteredVersion]:
        found = self.client.search_model_versions(f"name = '{_quote(name)}'")
        return sorted((self._describe(mv) for mv in found), key=lambda v: v.version)

    def aliases(self, name: str) -> dict[str, int]:
        return {
            alias: int(v) for alias, v in self.client.get_registered_model(name).aliases.items()
        }

    def model_names(self) -> list[str]:
        return sorted(m.name for m in self.client.search_registered_models())

    def _describe(self, mv: Any) -> RegisteredVersion:
        metrics = self.client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        return RegisteredVersion(
            mv.name, int(mv.version), mv.run_id or "", dict(mv.tags), dict(metrics)
        )


def _requirements() -> list[str]:
    """What loading a logged pipeline needs, at the versions that trained it."""
    from importlib.metadata import version

    packages = ("scikit-learn", "skops", "numpy", "pandas", "scipy")
    return [f"{name}=={version(name)}" for name in packages]


def _quote(text: str) -> str:
    return text.replace("'", "\\'")
