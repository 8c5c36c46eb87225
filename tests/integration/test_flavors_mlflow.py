"""Models registered straight into a real MLflow server (as a notebook would: no streamops in
the logging), loaded through MlflowRegistry and the predictor's loader under a trust policy:
a LightGBM classifier with a signature serves probabilities, a custom pyfunc regressor serves
its values, and a model with no signature, a pickled pyfunc where pickles are not allowed and
a flavor outside the allow-list are refused with the reason."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import mlflow
import mlflow.lightgbm
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature
from mlflow.pyfunc.model import PythonModel

from predictor.cache import ModelCache
from predictor.service import Predictor
from shared.errors import ModelRefused
from shared.model_loading import LoadPolicy
from shared.registry import MlflowRegistry
from tests.support.outside import ROW, frame, log_lightgbm, log_pyfunc, log_unsigned, log_xgboost

pytestmark = pytest.mark.integration
TRUSTING = LoadPolicy(allow_pickle=True)


def _register(
    mlflow_url: str, log: Callable[[str, int], Any], production: bool = True
) -> tuple[str, int]:
    """Log and register a model under a name of this test's own (the server is shared)."""
    name = f"flavors-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(mlflow_url)
    mlflow.set_experiment(f"outside-{name}")
    with mlflow.start_run():
        version = int(log(name, 3).registered_model_version)
    if production:
        MlflowClient(tracking_uri=mlflow_url).set_registered_model_alias(
            name, "production", str(version)
        )
    return name, version


def _predictor(registry: MlflowRegistry, policy: LoadPolicy, name: str) -> Predictor:
    return Predictor(registry, {}, ModelCache(), policy=policy, serves=lambda n: n == name)


def test_a_lightgbm_classifier_with_a_signature_serves_probabilities(mlflow_url: str) -> None:
    name, version = _register(mlflow_url, log_lightgbm)
    registry = MlflowRegistry(mlflow_url)
    loaded = registry.load_model(name, version, LoadPolicy())  # skops: no pickle needed
    assert (loaded.flavor, loaded.pickled) == ("lightgbm", False)
    assert isinstance(loaded.example, pd.DataFrame)
    assert registry.production_versions()[name] == version

    predictor = _predictor(registry, LoadPolicy(), name)
    (served,) = predictor.converge()
    assert served.schema.source == "signature"
    assert served.schema.names == ("amount", "age", "visits")
    answer = predictor.predict(name, pd.DataFrame([ROW, ROW]))
    assert answer.classes == (0, 1)
    assert answer.probabilities is not None
    assert sum(answer.probabilities[0]) == pytest.approx(1.0)
    assert answer.predictions[0] in (0, 1)
    assert type(answer.predictions[0]) is int  # JSON-safe, not a numpy scalar
    # The trainer's view of the same version: something with predict_proba and classes_.
    assert list(registry.load(name, version).classes_) == [0, 1]


def test_an_xgboost_classifier_loads_from_its_ubj_file_without_pickles(mlflow_url: str) -> None:
    name, version = _register(mlflow_url, log_xgboost)
    predictor = _predictor(MlflowRegistry(mlflow_url), LoadPolicy(allow_pickle=False), name)
    (served,) = predictor.converge()
    assert (served.flavor, served.version) == ("xgboost", version)
    answer = predictor.predict(name, pd.DataFrame([ROW]))
    assert answer.classes == (0, 1)
    assert answer.probabilities is not None
    assert sum(answer.probabilities[0]) == pytest.approx(1.0)


def test_a_custom_pyfunc_regressor_serves_its_values(mlflow_url: str) -> None:
    name, version = _register(mlflow_url, log_pyfunc)
    registry = MlflowRegistry(mlflow_url)
    predictor = _predictor(registry, TRUSTING, name)
    (served,) = predictor.converge()
    assert (served.flavor, served.version) == ("python_function", version)
    rows, _ = frame(rows=5, seed=9)
    answer = predictor.predict(name, rows)
    expected = rows["amount"] * 0.5 + rows["visits"] * 10.0 - rows["age"] * 0.1
    assert answer.probabilities is None
    assert answer.predictions == pytest.approx(expected.tolist())
    assert all(type(v) is float for v in answer.predictions)


def test_a_pickled_pyfunc_is_refused_where_pickles_are_not_allowed(mlflow_url: str) -> None:
    name, version = _register(mlflow_url, log_pyfunc)
    registry = MlflowRegistry(mlflow_url)
    with pytest.raises(ModelRefused, match="STREAMOPS_PREDICTOR_ALLOW_PICKLE") as refused:
        registry.load_model(name, version, LoadPolicy(allow_pickle=False))
    assert "cloudpickle" in str(refused.value)
    predictor = _predictor(registry, LoadPolicy(allow_pickle=False), name)
    with pytest.raises(ModelRefused):
        predictor.converge()
    assert predictor.cache.version(name) is None
    assert predictor.refused(name) == version
    assert predictor.stale() == []  # remembered: not tried again at every converge


def test_a_model_without_a_signature_is_refused_with_the_reason(mlflow_url: str) -> None:
    name, version = _register(mlflow_url, log_unsigned)
    predictor = _predictor(MlflowRegistry(mlflow_url), TRUSTING, name)
    with pytest.raises(ModelRefused, match="no signature"):
        predictor.swap_in(name, version)
    assert predictor.cache.version(name) is None


def test_a_flavor_outside_the_allow_list_is_refused(mlflow_url: str) -> None:
    name, version = _register(mlflow_url, log_lightgbm, production=False)
    registry = MlflowRegistry(mlflow_url)
    with pytest.raises(ModelRefused, match="not allowed; allowed: sklearn") as refused:
        registry.load_model(name, version, LoadPolicy(flavors=("sklearn",)))
    assert "lightgbm" in str(refused.value)
    assert name not in registry.production_versions()  # no alias: not served anywhere


def test_several_output_columns_are_one_object_per_row(mlflow_url: str) -> None:
    class Quote(PythonModel):
        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
            return pd.DataFrame(
                {"low": model_input["amount"] * 0.9, "high": model_input["amount"] * 1.1}
            )

    def log_quote(name: str, seed: int) -> Any:
        x, _ = frame(rows=20, seed=seed)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=Quote(),
            signature=infer_signature(x, Quote().predict(None, x)),
            registered_model_name=name,
            pip_requirements=["pandas"],
        )

    name, _ = _register(mlflow_url, log_quote)
    predictor = _predictor(MlflowRegistry(mlflow_url), TRUSTING, name)
    predictor.converge()
    answer = predictor.predict(name, pd.DataFrame([ROW]))
    (row,) = answer.predictions
    assert row == pytest.approx({"low": ROW["amount"] * 0.9, "high": ROW["amount"] * 1.1})
    assert np.isclose(row["low"], 108.45)


def test_a_lightgbm_booster_is_loaded_from_its_native_file_and_gives_probabilities(
    mlflow_url: str,
) -> None:
    import lightgbm

    def log_booster(name: str, seed: int) -> Any:
        x, y = frame(rows=300, seed=seed)
        booster = lightgbm.train(
            {"objective": "binary", "verbose": -1}, lightgbm.Dataset(x, y), num_boost_round=10
        )
        return mlflow.lightgbm.log_model(
            booster,
            name="model",
            signature=infer_signature(x, booster.predict(x)),
            registered_model_name=name,
            pip_requirements=["lightgbm"],
        )

    name, version = _register(mlflow_url, log_booster)
    predictor = _predictor(MlflowRegistry(mlflow_url), LoadPolicy(allow_pickle=False), name)
    (served,) = predictor.converge()
    assert (served.flavor, served.version, served.classes) == ("lightgbm", version, (0, 1))
    answer = predictor.predict(name, pd.DataFrame([ROW]))
    assert answer.probabilities is not None
    (low, high) = answer.probabilities[0]
    assert low + high == pytest.approx(1.0)
    assert answer.predictions == [int(high > low)]
