"""Loading a registered model version from MLflow."""

from __future__ import annotations

import tempfile
from typing import Any


def load_version(client: Any, tracking_uri: str, name: str, version: int) -> Any:
    """Version `version` of `name`, through this registry's server, not MLflow's global
    tracking URI (which a service configured with STREAMOPS_MLFLOW_TRACKING_URI alone never
    sets): `models:/...` would silently look in a local ./mlflow.db instead."""
    import mlflow.artifacts
    import mlflow.sklearn

    uri = client.get_model_version_download_uri(name, str(version))
    with tempfile.TemporaryDirectory(prefix="streamops-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri
        )
        return mlflow.sklearn.load_model(local)
