"""The estimators a training spec may name, and the skops types each needs trusted.

MLflow saves scikit-learn models with skops, which refuses to load types it does not know are
safe. Each entry lists the types its fitted pipeline contains that skops does not trust by
default, reviewed here once: a tree's node arrays are indexed without bounds checks, so these
are trusted because streamops itself wrote the files (the registry is ours). An estimator not
listed is refused with a clear error rather than trusted blindly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.datasets import EstimatorSpec, Task
from shared.errors import ConfigError

_TREE = "sklearn.tree._tree.Tree"
_HIST = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"
_DTYPE = "numpy.dtype"


@dataclass(frozen=True)
class Estimator:
    task: Task
    factory: Callable[..., Any]
    trusted_types: tuple[str, ...]


def _sklearn(module: str, name: str) -> Callable[..., Any]:
    def build(**params: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(module), name)(**params)

    return build


ESTIMATORS: dict[str, Estimator] = {
    "HistGradientBoostingClassifier": Estimator(
        "classification",
        _sklearn("sklearn.ensemble", "HistGradientBoostingClassifier"),
        (_DTYPE, _HIST),
    ),
    "HistGradientBoostingRegressor": Estimator(
        "regression", _sklearn("sklearn.ensemble", "HistGradientBoostingRegressor"), (_DTYPE, _HIST)
    ),
    "RandomForestClassifier": Estimator(
        "classification", _sklearn("sklearn.ensemble", "RandomForestClassifier"), (_DTYPE, _TREE)
    ),
    "RandomForestRegressor": Estimator(
        "regression", _sklearn("sklearn.ensemble", "RandomForestRegressor"), (_DTYPE, _TREE)
    ),
    "LogisticRegression": Estimator(
        "classification", _sklearn("sklearn.linear_model", "LogisticRegression"), (_DTYPE,)
    ),
    "Ridge": Estimator("regression", _sklearn("sklearn.linear_model", "Ridge"), (_DTYPE,)),
}


def resolve(spec: EstimatorSpec, task: Task) -> Estimator:
    estimator = ESTIMATORS.get(spec.name)
    if estimator is None:
        raise ConfigError(f"unknown estimator {spec.name!r}; known: {sorted(ESTIMATORS)}")
    if estimator.task != task:
        raise ConfigError(f"{spec.name} is a {estimator.task} estimator, the task is {task}")
    return estimator


def build(spec: EstimatorSpec, task: Task) -> Any:
    try:
        return resolve(spec, task).factory(**spec.params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for {spec.name}: {exc}") from exc
