"""The trust policy, decided from a model's MLmodel flavors alone (before any deserialisation):
which flavor loads it, whether that unpickles code, and the refusals' reasons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.errors import ModelRefused
from shared.model_loading import Decision, LoadPolicy, check_source, decide

STRICT = LoadPolicy()  # the default flavors, no pickles
Flavors = dict[str, dict[str, Any]]

SKLEARN_SKOPS: Flavors = {
    "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.skops"},
    "sklearn": {"pickled_model": "model.skops", "serialization_format": "skops"},
}
SKLEARN_CLOUDPICKLE: Flavors = {
    "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.pkl"},
    "sklearn": {"pickled_model": "model.pkl", "serialization_format": "cloudpickle"},
}
LGBM_CLASSIFIER: Flavors = {
    "lightgbm": {"model_class": "lightgbm.sklearn.LGBMClassifier", "serialization_format": "skops"},
    "python_function": {"loader_module": "mlflow.lightgbm", "data": "model.skops"},
}
LGBM_PICKLED: Flavors = {
    "lightgbm": {
        "model_class": "lightgbm.sklearn.LGBMClassifier",
        "serialization_format": "pickle",
    },
    "python_function": {"loader_module": "mlflow.lightgbm"},
}
LGBM_BOOSTER: Flavors = {
    "lightgbm": {"model_class": "lightgbm.basic.Booster", "data": "model.lgb"},
    "python_function": {"loader_module": "mlflow.lightgbm", "data": "model.lgb"},
}
XGB: Flavors = {
    "xgboost": {"model_class": "xgboost.sklearn.XGBClassifier", "model_format": "ubj"},
    "python_function": {"loader_module": "mlflow.xgboost", "data": "model.ubj"},
}
PYFUNC_PICKLED: Flavors = {
    "python_function": {
        "loader_module": "mlflow.pyfunc.model",
        "python_model": "python_model.pkl",
        "cloudpickle_version": "3.1.3",
    }
}
PYFUNC_FROM_CODE: Flavors = {
    "python_function": {"loader_module": "mlflow.pyfunc.loaders.code_model", "model_code_path": "m"}
}


@pytest.mark.parametrize(
    ("flavors", "chosen"),
    [
        (SKLEARN_SKOPS, "sklearn"),
        (LGBM_CLASSIFIER, "lightgbm"),
        (LGBM_BOOSTER, "lightgbm"),
        (XGB, "xgboost"),
    ],
)
def test_native_safe_formats_load_natively_without_pickles(flavors: Flavors, chosen: str) -> None:
    decision = decide(flavors, STRICT)
    assert (decision.flavor, decision.pickled) == (chosen, False)


def test_the_first_allowed_flavor_the_model_has_is_chosen() -> None:
    both = {**XGB, "sklearn": {"serialization_format": "skops"}}
    assert decide(both, LoadPolicy(flavors=("xgboost", "sklearn"))).flavor == "xgboost"
    assert decide(both, LoadPolicy(flavors=("sklearn", "xgboost"))).flavor == "sklearn"
    assert decide(PYFUNC_PICKLED, LoadPolicy(allow_pickle=True)).flavor == "python_function"


def test_a_model_with_none_of_the_allowed_flavors_is_refused() -> None:
    with pytest.raises(ModelRefused) as refused:
        decide(XGB, LoadPolicy(flavors=("sklearn", "lightgbm")))
    assert "flavor xgboost is not allowed; allowed: sklearn, lightgbm" in str(refused.value)
    assert "STREAMOPS_PREDICTOR_FLAVORS" in str(refused.value)


def test_a_native_flavor_left_out_is_not_let_in_by_its_pyfunc_wrapper() -> None:
    with pytest.raises(ModelRefused, match="flavor xgboost is not allowed"):
        decide(XGB, LoadPolicy(flavors=("sklearn", "lightgbm", "python_function")))
    # A flavor streamops has no native loader for goes through python_function (and its
    # loader, unknown, counts as a pickle).
    torch = {"pytorch": {}, "python_function": {"loader_module": "mlflow.pytorch"}}
    assert decide(torch, LoadPolicy(allow_pickle=True)) == Decision("python_function", True)
    with pytest.raises(ModelRefused, match="ALLOW_PICKLE"):
        decide(torch, STRICT)


@pytest.mark.parametrize(
    ("flavors", "why"),
    [
        (SKLEARN_CLOUDPICKLE, "serialization_format cloudpickle"),
        (LGBM_PICKLED, "serialization_format pickle"),
        (PYFUNC_PICKLED, "python_model pickled with cloudpickle"),
        (PYFUNC_FROM_CODE, "not known to load safely"),
        ({"sklearn": {}}, "serialization_format pickle"),  # MLflow's default when unsaid
        ({"xgboost": {"model_format": "pkl"}}, "model_format pkl"),
        ({"xgboost": {"model_class": "evil.Model", "model_format": "ubj"}}, "not xgboost's"),
        ({"lightgbm": {"model_class": "os.Booster"}}, "not lightgbm's"),
    ],
)
def test_loaders_that_unpickle_are_refused_unless_pickles_are_allowed(
    flavors: Flavors, why: str
) -> None:
    with pytest.raises(ModelRefused, match="STREAMOPS_PREDICTOR_ALLOW_PICKLE=true") as refused:
        decide(flavors, STRICT)
    assert why in str(refused.value)
    allowed = decide(flavors, LoadPolicy(allow_pickle=True))
    assert allowed.pickled is True


def test_a_pyfunc_naming_a_native_loader_without_its_flavor_is_not_known_safe() -> None:
    # Without the sklearn flavor's configuration, nothing says the file is skops.
    orphan = {"python_function": {"loader_module": "mlflow.sklearn"}}
    with pytest.raises(ModelRefused, match="not known to load safely"):
        decide(orphan, STRICT)


def test_artifacts_on_a_local_path_are_not_the_registrys() -> None:
    remote = "http://mlflow:5000"
    check_source("mlflow-artifacts:/1/models/m-1/artifacts", remote)
    check_source("s3://bucket/1/models/m-1/artifacts", remote)
    for uri in ("/etc/models/evil", "file:///tmp/evil"):
        with pytest.raises(ModelRefused, match="local path"):
            check_source(uri, remote)
    check_source("/var/mlruns/1/m-1/artifacts", "sqlite:///mlflow.db")  # a local registry


def test_a_verified_graph_that_cannot_be_read_is_a_refusal_not_a_failed_load(
    tmp_path: Path,
) -> None:
    from shared.model_loading import _compiled

    class Version:
        tags = {"streamops.onnx": "verified"}
        run_id = "0123456789abcdef"

    class Client:
        def get_model_version(self, name: str, version: str) -> Version:
            return Version()

    # A registry where that run has no artifacts at all.
    verdict, onnx = _compiled(Client(), f"file://{tmp_path}", "m", 1)
    assert onnx is None
    assert verdict is not None
    assert verdict.startswith("refused: its graph cannot be read: ")
