"""Training entry points (the user's own code) and the LightGBM/XGBoost built-ins, without
MLflow: spec validation, where the code is imported from and how the model records it, what
fails a training and how it says so."""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io

from shared.datasets import DatasetSpec, EstimatorSpec, TrainingSpec, parse_spec
from shared.errors import ConfigError, EntryPointFailed, MissingExtra
from shared.model_logging import requirements_for, skops_types
from shared.settings import BUNDLED_DATASETS, CommonSettings, TrainerSettings
from trainer import entry_points, estimators
from trainer.training import fit
from trainer.worker import Setup

TOY = """
name: toy
target: label
columns:
  - {name: a, type: float}
  - {name: b, type: float}
  - {name: kind, type: str}
  - {name: label, type: int}
"""


def _spec(training: dict[str, Any]) -> DatasetSpec:
    spec = parse_spec(TOY)
    return spec.model_copy(update={"training": TrainingSpec.model_validate(training)})


def _training(**overrides: Any) -> dict[str, Any]:
    return {"task": "classification", "metric": "roc_auc", **overrides}


def _frame(rows: int = 400, seed: int = 0, labels: tuple[int, int] = (0, 1)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    label = np.where(a + 0.5 * b + rng.normal(0, 0.5, rows) > 0, labels[1], labels[0])
    kind = rng.choice(["x", "y"], rows)
    return pd.DataFrame({"a": a, "b": b, "kind": kind, "label": label})


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    path = tmp_path / "plugins"
    path.mkdir()
    return path


def _plugin(plugins: Path, code: str) -> str:
    """A module of `code` in the plugins directory, under a name no other test imported."""
    name = f"plugin_{uuid.uuid4().hex[:10]}"
    (plugins / f"{name}.py").write_text(code)
    return name


LOGISTIC = """
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder


def train(x, y, spec, C=1.0):
    encode = make_column_transformer((OneHotEncoder(), ["kind"]), remainder="passthrough")
    return make_pipeline(encode, LogisticRegression(C=C)).fit(x, y)
"""


# -- the spec ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "training",
    [
        _training(),
        _training(estimator={"name": "Ridge"}, entry_point="mine:train"),
    ],
)
def test_a_training_names_exactly_one_of_estimator_and_entry_point(
    training: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match="exactly one of `estimator`"):
        TrainingSpec.model_validate(training)


@pytest.mark.parametrize("name", ["mine", "mine:", ":train", "my-module:train", "a..b:train"])
def test_an_entry_point_is_module_colon_function(name: str) -> None:
    with pytest.raises(ValueError, match="entry_point"):
        TrainingSpec.model_validate(_training(entry_point=name))


def test_entry_params_go_with_an_entry_point_only() -> None:
    with pytest.raises(ValueError, match="entry_params are for an entry_point"):
        TrainingSpec.model_validate(
            _training(estimator={"name": "LogisticRegression"}, entry_params={"C": 2})
        )


def test_the_fingerprint_follows_the_entry_point_and_its_params() -> None:
    base = TrainingSpec.model_validate(_training(entry_point="pkg.mod:train"))
    other = TrainingSpec.model_validate(_training(entry_point="pkg.mod:train_v2"))
    tuned = TrainingSpec.model_validate(
        _training(entry_point="pkg.mod:train", entry_params={"C": 2})
    )
    assert len({base.fingerprint(), other.fingerprint(), tuned.fingerprint()}) == 3
    assert hash(tuned) == hash(TrainingSpec.model_validate(tuned.model_dump()))


def test_an_estimator_spec_keeps_the_fingerprint_it_had_before_entry_points() -> None:
    # The churn spec's training key must not change with the upgrade (no retraining of it).
    from shared.datasets import load_spec

    training = load_spec(BUNDLED_DATASETS, "churn").training
    assert training is not None
    assert training.fingerprint()[:16] == "8cf2bc81935fe1e8"


# -- where the code comes from -------------------------------------------------------------


def test_an_entry_point_from_the_plugins_dir_ships_its_module_file(plugins: Path) -> None:
    name = _plugin(plugins, LOGISTIC)
    entry = entry_points.resolve(f"{name}:train", plugins)
    assert entry.code_path == plugins / f"{name}.py"
    assert entry.requirement is None
    assert str(plugins) in sys.path


def test_a_copy_imported_from_a_loaded_model_gives_way_to_the_plugins_dir(
    plugins: Path, tmp_path: Path
) -> None:
    # Loading a champion that ships the module (MLflow code_paths) imports the copy saved with
    # it, first on the path: the next training must use, and ship, the plugins dir's own.
    name = _plugin(plugins, LOGISTIC)
    saved = tmp_path / "model" / "code"
    saved.mkdir(parents=True)
    (saved / f"{name}.py").write_text("def train(x, y, spec):\n    return 'the old code'\n")
    sys.path.insert(0, str(saved))
    try:
        importlib.import_module(name)
        entry = entry_points.resolve(f"{name}:train", plugins)
    finally:
        sys.path.remove(str(saved))
    assert entry.code_path == plugins / f"{name}.py"
    assert sys.modules[name].__file__ == str(plugins / f"{name}.py")
    assert sys.path[0] == str(plugins)


def test_an_entry_point_in_a_plugin_package_ships_the_package(plugins: Path) -> None:
    package = f"pkg_{uuid.uuid4().hex[:10]}"
    (plugins / package / "models").mkdir(parents=True)
    (plugins / package / "__init__.py").write_text("")
    (plugins / package / "models" / "__init__.py").write_text("")
    (plugins / package / "models" / "logistic.py").write_text(LOGISTIC)
    entry = entry_points.resolve(f"{package}.models.logistic:train", plugins)
    assert entry.code_path == plugins / package


def test_an_entry_point_from_an_installed_distribution_is_pinned_not_shipped() -> None:
    from importlib.metadata import version

    entry = entry_points.resolve("sklearn.linear_model:LogisticRegression")
    assert entry.code_path is None
    assert entry.requirement == f"scikit-learn=={version('scikit-learn')}"


def test_the_plugins_dir_defaults_to_the_datasets_dir_s_plugins(tmp_path: Path) -> None:
    common = CommonSettings(datasets_dir=tmp_path)
    assert TrainerSettings(common=common).plugins is None
    (tmp_path / "plugins").mkdir()
    assert TrainerSettings(common=common).plugins == tmp_path / "plugins"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    settings = TrainerSettings(common=common, plugins_dir=elsewhere)
    assert settings.plugins == elsewhere
    # The worker processes are told, so they import from it too.
    assert Setup.of(settings).plugins_dir == str(elsewhere)


# -- training through an entry point ---------------------------------------------------------


def test_an_entry_point_trains_and_streamops_judges_it(plugins: Path) -> None:
    name = _plugin(plugins, LOGISTIC)
    spec = _spec(_training(entry_point=f"{name}:train", entry_params={"C": 0.5}))
    trained = fit(spec, _frame(), plugins)
    assert set(trained.metrics) == {"accuracy", "f1", "roc_auc", "log_loss"}
    assert trained.metrics["roc_auc"] > 0.85
    assert trained.pipeline.steps[-1][1].C == 0.5
    assert trained.flavor == "sklearn"
    assert trained.entry is not None
    # Only the training rows, with the spec's feature columns, reach the user's code.
    assert len(trained.split.x_train) == 320


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("import not_a_module_anywhere\n", "cannot import"),
        ("x = 1\n", "has no function train"),
        ("def train(x, y, spec):\n    return 1 / 0\n", "raised ZeroDivisionError"),
        ("def train(x, y, spec):\n    return 'a model'\n", "returned str, not a model"),
        (
            "from sklearn.linear_model import LogisticRegression\n"
            "def train(x, y, spec):\n    return LogisticRegression()\n",
            "unfitted LogisticRegression",
        ),
        (
            "from sklearn.svm import LinearSVC\n"
            "def train(x, y, spec):\n    return LinearSVC().fit(x[['a', 'b']], y)\n",
            "without predict_proba",
        ),
        (
            "from sklearn.linear_model import LogisticRegression\n"
            "def train(x, y, spec):\n    return LogisticRegression().fit(x[['a']], y)\n",
            "failed on the hold-out rows",
        ),
    ],
)
def test_a_bad_entry_point_fails_the_training_and_says_why(
    plugins: Path, code: str, words: str
) -> None:
    name = _plugin(plugins, code)
    spec = _spec(_training(entry_point=f"{name}:train"))
    with pytest.raises(EntryPointFailed, match=words) as caught:
        fit(spec, _frame(), plugins)
    assert f"{name}:train" in str(caught.value)
    assert isinstance(caught.value, ConfigError)  # the worker's permanent failure


def test_a_missing_module_is_looked_for_in_the_environment_and_the_plugins_dir(
    plugins: Path,
) -> None:
    with pytest.raises(EntryPointFailed, match=f"plugins directory {plugins}"):
        entry_points.resolve("nowhere_to_be_found:train", plugins)


PYFUNC = """
import mlflow.pyfunc
import pandas as pd


class Sign(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[int]:
        return (model_input["a"] + 0.5 * model_input["b"] > 0).astype(int).tolist()


def train(x, y, spec):
    return Sign()
"""


def test_a_python_model_classifier_is_judged_on_its_labels(plugins: Path) -> None:
    name = _plugin(plugins, PYFUNC)
    spec = _spec(_training(entry_point=f"{name}:train", metric="accuracy"))
    trained = fit(spec, _frame(), plugins)
    assert trained.flavor == "python_function"
    assert set(trained.metrics) == {"accuracy", "f1"}
    assert trained.metrics["accuracy"] > 0.8


def test_a_python_model_cannot_be_gated_on_probabilities(plugins: Path) -> None:
    name = _plugin(plugins, PYFUNC)
    spec = _spec(_training(entry_point=f"{name}:train", metric="roc_auc"))
    with pytest.raises(EntryPointFailed, match="judged on its labels only"):
        fit(spec, _frame(), plugins)


# -- how the model records its code and libraries -------------------------------------------


def test_the_bundled_example_pins_lightgbm_and_its_types_round_trip_through_skops() -> None:
    from shared.datasets import feature_frame, load_spec

    spec = load_spec(BUNDLED_DATASETS, "rentals")
    frame = pd.read_csv(BUNDLED_DATASETS / "rentals" / "rentals.csv", nrows=600)
    frame["booked_at"] = pd.to_datetime(frame["booked_at"])
    trained = fit(spec, frame, BUNDLED_DATASETS / "plugins")
    trusted = skops_types(trained.pipeline)
    assert trusted is not None
    assert "rentals_features.RentalFeatures" in trusted
    assert "lightgbm.basic.Booster" in trusted
    requirements = requirements_for(trained.pipeline)
    assert any(r.startswith("lightgbm==") for r in requirements)
    assert not any(r.startswith("xgboost") for r in requirements)
    rows = feature_frame(spec, frame.head(3))
    loaded = skops.io.loads(skops.io.dumps(trained.pipeline), trusted=list(trusted))
    np.testing.assert_allclose(loaded.predict_proba(rows), trained.pipeline.predict_proba(rows))


class Opaque:
    """A model skops cannot rebuild: it holds a lambda."""

    def __init__(self) -> None:
        self.scale: Callable[[Any], Any] = lambda v: v * 2

    def predict(self, x: Any) -> Any:
        return self.scale(x)


def test_a_model_skops_cannot_save_gets_no_trusted_types() -> None:
    assert skops_types(Opaque()) is None  # logged with cloudpickle instead


# -- LightGBM and XGBoost built-ins --------------------------------------------------------


@pytest.mark.parametrize("name", ["LGBMClassifier", "XGBClassifier"])
def test_the_boosters_train_as_built_ins_with_their_reviewed_skops_types(name: str) -> None:
    spec = _spec(_training(estimator={"name": name, "params": {"n_estimators": 30}}))
    trained = fit(spec, _frame())
    assert trained.metrics["roc_auc"] > 0.85
    reviewed = estimators.resolve(
        spec.training.estimator if spec.training else None, "classification"
    )
    found = skops.io.get_untrusted_types(data=skops.io.dumps(trained.pipeline))
    assert set(found) == set(reviewed.trusted_types)
    assert list(trained.pipeline.classes_) == [0, 1]


@pytest.mark.parametrize("name", ["LGBMRegressor", "XGBRegressor"])
def test_the_booster_regressors_train_as_built_ins(name: str) -> None:
    frame = _frame().assign(label=lambda f: (f["a"] * 3).round().astype(int))
    training = _training(task="regression", metric="rmse", estimator={"name": name})
    trained = fit(_spec(training), frame)
    assert trained.metrics["r2"] > 0.8


def test_xgboost_classifiers_need_labels_0_to_n_minus_1() -> None:
    spec = _spec(_training(estimator={"name": "XGBClassifier"}))
    with pytest.raises(ConfigError, match=r"integers 0\.\.n-1.*found \[1, 2\]"):
        fit(spec, _frame(labels=(1, 2)))
    # LightGBM keeps any labels, and serves them as they are.
    lgbm = fit(_spec(_training(estimator={"name": "LGBMClassifier"})), _frame(labels=(1, 2)))
    assert list(lgbm.pipeline.classes_) == [1, 2]


def test_a_booster_without_its_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lightgbm.sklearn", None)  # import raises ImportError
    with pytest.raises(MissingExtra, match=r"pip install 'streamops\[lightgbm\]'"):
        estimators.build(EstimatorSpec(name="LGBMClassifier"), "classification")


def test_an_entry_point_spec_has_no_built_in_estimator() -> None:
    with pytest.raises(ConfigError, match="names an entry point"):
        estimators.resolve(None, "classification")


def test_the_worker_processes_import_from_the_plugins_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from trainer import worker

    # Spawned processes start with their parent's sys.path: take out what other tests put on
    # it, so that only the worker's own set-up can find the plugins.
    plugins = str(BUNDLED_DATASETS / "plugins")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != plugins])
    settings = TrainerSettings(common=CommonSettings(datasets_dir=BUNDLED_DATASETS))
    pool = worker.pool(settings)
    try:
        found = pool.submit(importlib.util.find_spec, "rentals_features").result(timeout=120)
    finally:
        pool.shutdown()
    assert found is not None
    assert found.origin == str(BUNDLED_DATASETS / "plugins" / "rentals_features.py")
