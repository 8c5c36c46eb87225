"""Training, registering, gating and promoting against a real MLflow server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow.artifacts
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from ingestor.service import ingest
from predictor.cache import ModelCache
from predictor.service import Predictor
from shared.compiled import CompiledModel
from shared.datasets import feature_frame, load_spec
from shared.drift import DriftReference
from shared.events import DataArrived, DataIngested
from shared.feature_store import FeatureStore
from shared.promotion import promote, rollback
from shared.registry import MlflowRegistry
from shared.settings import BUNDLED_DATASETS, IngestorSettings
from streamops.stack import local_stack
from tests.support.data import churn_rows, write_csv
from trainer.service import train_for, training_frame

pytestmark = pytest.mark.integration
Make = Callable[..., IngestorSettings]


def _ingest(settings: IngestorSettings, uri: str) -> DataIngested:
    store = FeatureStore(settings.common.feature_store_root)
    result = ingest(DataArrived(dataset="churn", source=uri), settings, store)
    assert isinstance(result, DataIngested), result
    return result


def assert_drift_reference_logged(
    registry: MlflowRegistry, spec_dir: Path, name: str, rows: int
) -> None:
    """Each feature's training distribution is logged with version 1, for live drift."""
    raw = registry.drift_reference(name, 1)
    assert raw is not None
    reference = DriftReference.model_validate(raw)
    spec = load_spec(spec_dir, "churn")
    assert [f.name for f in reference.features] == [c.name for c in spec.feature_columns]
    assert 0 < reference.rows < rows  # the training split, not the hold-out rows
    for feature in reference.features:
        assert sum(feature.shares) == pytest.approx(1.0)


def test_train_register_gate_promote_and_roll_back(
    make_settings: Make, mlflow_url: str, datasets: tuple[Path, str], inbox: Path
) -> None:
    spec_dir, name = datasets
    settings = make_settings(datasets_dir=spec_dir)
    store = FeatureStore(settings.common.feature_store_root)
    registry = MlflowRegistry(mlflow_url)
    client = MlflowClient(tracking_uri=mlflow_url)

    first = _ingest(settings, str(BUNDLED_DATASETS / "churn" / "churn.csv"))
    outcome = train_for(first, spec_dir, store, registry)
    assert outcome is not None
    trained = outcome.trained
    assert (trained.model_name, trained.model_version, trained.dataset_version) == (name, 1, 1)
    assert trained.gate_passed
    assert trained.metrics["roc_auc"] > 0.75
    assert outcome.promoted is not None
    assert (outcome.promoted.version, outcome.promoted.reason) == (1, "auto")
    assert outcome.promoted.previous_version is None
    run = client.get_run(trained.run_id)
    assert run.data.params["estimator"] == "HistGradientBoostingClassifier"
    assert {"accuracy", "f1", "roc_auc", "log_loss", "training_seconds"} <= set(run.data.metrics)
    assert run.inputs is not None
    (lineage,) = run.inputs.dataset_inputs
    assert lineage.dataset.name == "churn@v1"
    assert lineage.dataset.digest == first.content_hash[:36]
    version = client.get_model_version(name, "1")
    assert version.tags["streamops.dataset_version"] == "1"
    assert version.tags["streamops.content_hash"] == first.content_hash
    assert "HistGradientBoostingClassifier" in version.tags["streamops.training_spec"]
    assert set(client.get_registered_model(name).aliases) == {"dev", "staging", "production"}
    assert_drift_reference_logged(registry, spec_dir, name, first.rows)

    # The same event again: no second model version.
    again = train_for(first, spec_dir, store, registry)
    assert again is not None
    assert again.trained.model_version == 1
    assert again.trained.event_id == trained.event_id
    assert again.promoted is None

    # A second version whose labels are noise: registered, judged, not promoted.
    rows = churn_rows(3000, seed=9)
    shuffled = [r["churned"] for r in rows]
    shuffled = shuffled[7:] + shuffled[:7]
    write_csv(
        inbox / "noise.csv", [{**r, "churned": c} for r, c in zip(rows, shuffled, strict=True)]
    )
    second = _ingest(settings, str(inbox / "noise.csv"))
    bad = train_for(second, spec_dir, store, registry)
    assert bad is not None
    assert (bad.trained.model_version, bad.trained.gate_passed) == (2, False)
    assert any("roc_auc" in r for r in bad.trained.gate_reasons)
    assert bad.promoted is None
    assert registry.alias(name, "production") == 1
    assert registry.alias(name, "dev") == 2

    # By hand it can still be promoted; rollback then restores version 1.
    manual = promote(registry, name, 2, "manual")
    assert (manual.version, manual.previous_version) == (2, 1)
    back = rollback(registry, name)
    assert (back.version, back.previous_version, back.reason) == (1, 2, "rollback")
    assert registry.alias(name, "production") == 1


@pytest.fixture
def postgres_mlflow(tmp_path: Path, postgres_db: str) -> Iterator[str]:
    """An MLflow server whose backend store is a throwaway PostgreSQL database."""
    with local_stack(tmp_path / "pg-mlflow") as stack:
        yield stack.start_mlflow(
            backend_uri=postgres_db.replace("postgresql://", "postgresql+psycopg://")
        )


def test_the_registry_flow_on_a_postgresql_backend(
    make_settings: Make, postgres_mlflow: str, datasets: tuple[Path, str]
) -> None:
    import mlflow

    spec_dir, name = datasets
    settings = make_settings(datasets_dir=spec_dir)
    store = FeatureStore(settings.common.feature_store_root)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(postgres_mlflow)
    try:
        registry = MlflowRegistry(postgres_mlflow)
        event = _ingest(settings, str(BUNDLED_DATASETS / "churn" / "churn.csv"))
        outcome = train_for(event, spec_dir, store, registry)
        assert outcome is not None
        assert outcome.promoted is not None
        assert registry.alias(name, "production") == 1
        assert registry.find(name, "streamops.dataset_version", "1") is not None
        manual = promote(registry, name, 1, "manual")
        assert manual.previous_version is None
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture
def rentals(tmp_path: Path) -> tuple[Path, Path, str]:
    """The bundled entry-point dataset under a model name of this test's own, and a copy of its
    plugins directory that no other process has on its import path."""
    spec = yaml.safe_load((BUNDLED_DATASETS / "rentals" / "spec.yaml").read_text())
    name = f"rentals-{uuid.uuid4().hex[:8]}"
    spec["training"]["model_name"] = name
    (tmp_path / "datasets" / "rentals").mkdir(parents=True)
    (tmp_path / "datasets" / "rentals" / "spec.yaml").write_text(yaml.safe_dump(spec))
    plugins = tmp_path / "plugins"
    shutil.copytree(BUNDLED_DATASETS / "plugins", plugins)
    return tmp_path / "datasets", plugins, name


# Run in a fresh interpreter, away from the repository and with no plugins directory on its
# path: only the model's code_paths can make rentals_features importable.
LOAD_ELSEWHERE = """
import importlib.util, json, sys
import mlflow.sklearn
import pandas as pd
assert importlib.util.find_spec("rentals_features") is None, "rentals_features is on the path"
model = mlflow.sklearn.load_model(sys.argv[1])
rows = pd.DataFrame(json.loads(sys.argv[2]))
print(json.dumps({
    "steps": [type(step).__name__ for _, step in model.steps],
    "classes": [int(c) for c in model.classes_],
    "proba": model.predict_proba(rows).tolist(),
}))
"""


def test_an_entry_point_training_has_the_lineage_of_a_built_in_one_and_loads_elsewhere(
    make_settings: Make, mlflow_url: str, rentals: tuple[Path, Path, str], tmp_path: Path
) -> None:
    spec_dir, plugins, name = rentals
    settings = make_settings(datasets_dir=spec_dir)
    store = FeatureStore(settings.common.feature_store_root)
    registry = MlflowRegistry(mlflow_url)
    client = MlflowClient(tracking_uri=mlflow_url)
    arrived = DataArrived(dataset="rentals", source=str(BUNDLED_DATASETS / "rentals/rentals.csv"))
    event = ingest(arrived, settings, store)
    assert isinstance(event, DataIngested), event

    outcome = train_for(event, spec_dir, store, registry, plugins_dir=plugins)
    assert outcome is not None
    trained = outcome.trained
    assert (trained.model_name, trained.model_version, trained.gate_passed) == (name, 1, True)
    assert outcome.promoted is not None
    # The same run as a built-in training: parameters, metrics, the input, the version's tags.
    run = client.get_run(trained.run_id)
    params = run.data.params
    assert params["entry_point"] == "rentals_features:train"
    assert params["estimator"] == "Pipeline"
    assert params["entry_params.n_estimators"] == "300"
    assert {"dataset", "dataset_version", "rows", "task", "split", "seed", "metric"} <= set(params)
    assert {"accuracy", "f1", "roc_auc", "log_loss", "training_seconds"} <= set(run.data.metrics)
    assert run.inputs is not None
    (lineage,) = run.inputs.dataset_inputs
    assert lineage.dataset.name == "rentals@v1"
    assert lineage.dataset.digest == event.content_hash[:36]
    tags = client.get_model_version(name, "1").tags
    assert (tags["streamops.dataset_version"], tags["streamops.content_hash"]) == (
        "1",
        event.content_hash,
    )
    assert tags["streamops.entry_point"] == "rentals_features:train"
    assert tags["streamops.serialization_format"] == "skops"
    # Its custom transformer has no ONNX converter: served natively, and the tag says why.
    assert (
        tags["streamops.onnx"] == "refused: no ONNX converter for rentals_features.RentalFeatures"
    )
    assert "rentals_features:train" in tags["streamops.training_spec"]
    assert set(client.get_registered_model(name).aliases) == {"dev", "staging", "production"}
    assert registry.drift_reference(name, 1) is not None

    # The model carries its code and its pinned libraries.
    uri = client.get_model_version_download_uri(name, "1")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path)))
    assert (local / "code" / "rentals_features.py").is_file()
    requirements = (local / "requirements.txt").read_text().split()
    assert any(r.startswith("lightgbm==") for r in requirements)
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["sklearn"]
    assert flavor["serialization_format"] == "skops"

    rows = pd.read_csv(BUNDLED_DATASETS / "rentals" / "rentals.csv", nrows=3)
    features = feature_frame(load_spec(spec_dir, "rentals"), rows)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_ELSEWHERE,
            f"models:/{name}/1",
            features.to_json(orient="records"),
        ],
        cwd=elsewhere,
        env={**_clean_env(), "MLFLOW_TRACKING_URI": mlflow_url},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert loaded["steps"] == ["RentalFeatures", "LGBMClassifier"]
    assert loaded["classes"] == [0, 1]
    assert len(loaded["proba"]) == 3
    assert all(abs(sum(p) - 1) < 1e-9 for p in loaded["proba"])


def _clean_env() -> dict[str, str]:
    """This process's environment without anything that adds to the import path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}


PYTHON_MODEL = """
import mlflow.pyfunc
import pandas as pd


class Threshold(mlflow.pyfunc.PythonModel):
    def __init__(self, cut):
        self.cut = cut

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[int]:
        return (model_input["lead_days"] > self.cut).astype(int).tolist()


def train(x, y, spec, cut=30):
    return Threshold(cut)
"""


def test_a_python_model_entry_point_is_logged_as_pyfunc_with_its_code(
    make_settings: Make, mlflow_url: str, rentals: tuple[Path, Path, str], tmp_path: Path
) -> None:
    spec_dir, plugins, name = rentals
    (plugins / "rentals_threshold.py").write_text(PYTHON_MODEL)
    spec_path = spec_dir / "rentals" / "spec.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["training"].update(
        entry_point="rentals_threshold:train",
        entry_params={"cut": 25},
        metric="accuracy",
        gate={"minimum": {"accuracy": 0.5}},
    )
    spec_path.write_text(yaml.safe_dump(spec))
    settings = make_settings(datasets_dir=spec_dir)
    store = FeatureStore(settings.common.feature_store_root)
    registry = MlflowRegistry(mlflow_url)
    arrived = DataArrived(dataset="rentals", source=str(BUNDLED_DATASETS / "rentals/rentals.csv"))
    event = ingest(arrived, settings, store)
    assert isinstance(event, DataIngested), event

    outcome = train_for(event, spec_dir, store, registry, plugins_dir=plugins)
    assert outcome is not None
    assert set(outcome.trained.metrics) == {"accuracy", "f1"}
    client = MlflowClient(tracking_uri=mlflow_url)
    tags = client.get_model_version(name, "1").tags
    assert tags["streamops.serialization_format"] == "cloudpickle"
    uri = client.get_model_version_download_uri(name, "1")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path)))
    assert (local / "code" / "rentals_threshold.py").is_file()
    assert (
        "python_model"
        in yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    )
    loaded = registry.load(name, 1)  # the champion the next training is compared with
    rows = pd.read_csv(BUNDLED_DATASETS / "rentals" / "rentals.csv", nrows=20)
    features = feature_frame(load_spec(spec_dir, "rentals"), rows)
    assert list(loaded.predict(features)) == (features["lead_days"] > 25).astype(int).tolist()


def test_a_trained_version_is_compiled_verified_and_served_compiled(
    make_settings: Make, mlflow_url: str, datasets: tuple[Path, str]
) -> None:
    """The trainer logs the version's ONNX graph and its verdict; a replica serves the graph,
    and its answers are the native model's, row by row; a replica told to serve natively
    does so."""
    spec_dir, name = datasets
    settings = make_settings(datasets_dir=spec_dir)
    store = FeatureStore(settings.common.feature_store_root)
    registry = MlflowRegistry(mlflow_url)
    client = MlflowClient(tracking_uri=mlflow_url)
    outcome = train_for(
        _ingest(settings, str(BUNDLED_DATASETS / "churn" / "churn.csv")), spec_dir, store, registry
    )
    assert outcome is not None
    assert outcome.promoted is not None
    assert client.get_model_version(name, "1").tags["streamops.onnx"] == "verified"
    run = client.get_run(outcome.trained.run_id)
    assert run.data.tags["streamops.onnx"] == "verified"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "onnx")] == ["onnx/model.onnx"]

    specs = {name: load_spec(spec_dir, "churn")}
    compiled = Predictor(registry, specs, ModelCache(), serves=lambda n: n == name)
    native = Predictor(
        registry, specs, ModelCache(), serves=lambda n: n == name, compiles=lambda n: False
    )
    (fast,) = compiled.converge()
    (slow,) = native.converge()
    assert (fast.runtime, fast.verdict) == ("onnx", "verified")
    assert isinstance(fast.model, CompiledModel)
    assert slow.runtime == "native"
    assert slow.verdict.startswith("native: forced")

    rows = training_frame(store, specs[name], 1).head(600)  # the validated rows
    a, b = compiled.predict(name, rows), native.predict(name, rows)
    assert a.predictions == b.predictions
    assert a.probabilities is not None
    assert b.probabilities is not None
    assert np.abs(np.asarray(a.probabilities) - np.asarray(b.probabilities)).max() < 1e-4
