"""The estimators a training spec may name, and the skops types each needs trusted.

MLflow saves scikit-learn models with skops, which refuses to load types it does not know are
safe. Each entry lists the types its fitted pipeline contains that skops does not trust by
default, reviewed here once: a tree's node arrays are indexed without bounds checks, so these
are trusted because streamops itself wrote the files (the registry is ours). An estimator not
listed is refused with a clear error rather than trusted blindly.

LightGBM and XGBoost come with optional extras (`pip install 'streamops[lightgbm]'`,
`'streamops[xgboost]'`); their scikit-learn wrappers keep the booster as an object skops does
not know, reviewed here like the trees: the booster is saved in the library's own model format
inside the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.datasets import EstimatorSpec, Task
from shared.errors import ConfigError, MissingExtra

_TREE = "sklearn.tree._tree.Tree"
_HIST = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"
_DTYPE = "numpy.dtype"
_LGBM = ("collections.OrderedDict", "lightgbm.basic.Booster")
_XGB = ("xgboost.core.Booster",)


@dataclass(frozen=True)
class Estimator:
    task: Task
    factory: Callable[..., Any]
    trusted_types: tuple[str, ...]
    # The optional extra that installs it (None: scikit-learn, always there).
    extra: str | None = None
    # XGBoost's classifiers take only the labels 0..n-1 (checked before fitting).
    encoded_labels: bool = False


def _sklearn(module: str, name: str, extra: str | None = None) -> Callable[..., Any]:
    def build(**params: Any) -> Any:
        import importlib

        try:
            found = importlib.import_module(module)
        except ImportError as exc:
            if extra is None:
                raise
            raise MissingExtra(
                f"{name} needs the {extra} package, which is not installed: "
                f"pip install 'streamops[{extra}]' ({exc})"
            ) from exc
        return getattr(found, name)(**params)

    return build


def _booster(task: Task, module: str, name: str, extra: str, types: tuple[str, ...]) -> Estimator:
    return Estimator(
        task,
        _sklearn(module, name, extra),
        (_DTYPE, *types, f"{module}.{name}"),
        extra,
        encoded_labels=extra == "xgboost" and task == "classification",
    )


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
    "LGBMClassifier": _booster(
        "classification", "lightgbm.sklearn", "LGBMClassifier", "lightgbm", _LGBM
    ),
    "LGBMRegressor": _booster("regression", "lightgbm.sklearn", "LGBMRegressor", "lightgbm", _LGBM),
    "XGBClassifier": _booster(
        "classification", "xgboost.sklearn", "XGBClassifier", "xgboost", _XGB
    ),
    "XGBRegressor": _booster("regression", "xgboost.sklearn", "XGBRegressor", "xgboost", _XGB),
}


def resolve(spec: EstimatorSpec | None, task: Task) -> Estimator:
    if spec is None:
        raise ConfigError("the training section names an entry point, not a built-in estimator")
    estimator = ESTIMATORS.get(spec.name)
    if estimator is None:
        raise ConfigError(f"unknown estimator {spec.name!r}; known: {sorted(ESTIMATORS)}")
    if estimator.task != task:
        raise ConfigError(f"{spec.name} is a {estimator.task} estimator, the task is {task}")
    return estimator


def build(spec: EstimatorSpec | None, task: Task) -> Any:
    estimator = resolve(spec, task)
    assert spec is not None  # resolve refuses None
    try:
        return estimator.factory(**spec.params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for {spec.name}: {exc}") from exc


def check_labels(spec: EstimatorSpec | None, task: Task, labels: Any) -> None:
    """XGBoost's classifiers refuse labels other than 0..n-1 (with a message about `classes`
    that names no column): say so in the spec's terms, before fitting. Labels 0..n-1 are also
    the classes served, so they stay the dataset's own."""
    if not resolve(spec, task).encoded_labels:
        return
    import numpy as np

    found = sorted(np.unique(np.asarray(labels)).tolist())
    if found != list(range(len(found))):
        assert spec is not None
        raise ConfigError(
            f"{spec.name} needs the target's labels to be the integers 0..n-1 in the training "
            f"rows; found {found[:10]}: recode the target, or use LGBMClassifier or "
            "HistGradientBoostingClassifier, which take any labels"
        )
