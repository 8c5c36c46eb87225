"""The user's own training code: `training.entry_point: "package.module:function"`.

The function is imported from the trainer's environment or its plugins directory (operator
configuration: an event never says where code comes from), called with the training rows and
the spec, and must return a fitted model. It never sees MLflow or Redis: streamops does the
split, the metrics, the gate and the logging around the call (trainer/service.py).

Whatever goes wrong in the user's code (an import error, an exception, something that is not a
model) is an EntryPointFailed naming the entry point: that training fails with the reason, like
a bad spec, and the trainer keeps running.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from shared.datasets import DatasetSpec, Task
from shared.errors import EntryPointFailed
from shared.model_logging import PYFUNC, SKLEARN, is_python_model

__all__ = ["PYFUNC", "SKLEARN", "EntryPoint", "check_model", "flavor", "resolve", "train"]


@dataclass(frozen=True)
class EntryPoint:
    """A resolved entry point and how a model it trains depends on its code: the file or
    package directory to log as MLflow `code_paths`, or the installed `package==version`."""

    name: str
    function: Any
    code_path: Path | None = None
    requirement: str | None = None


def on_import_path(plugins_dir: Path | None) -> None:
    """Put the plugins directory first on the import path: its modules win over installed ones
    of the same name, as an operator who put them there expects. First again if something
    went before it since (MLflow puts a loaded model's code directory first)."""
    if plugins_dir is None:
        return
    entry = str(plugins_dir)
    if sys.path[:1] != [entry]:
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)


def _from_plugins(module_name: str, plugins_dir: Path | None) -> None:
    """Forget an imported copy of a plugins-directory module that came from elsewhere: loading
    a champion whose model ships that module (MLflow `code_paths`) imports the copy saved with
    it, and a training must use, and ship, the plugins directory's current code instead."""
    top = module_name.partition(".")[0]
    if plugins_dir is None or top not in sys.modules:
        return
    ours = [plugins_dir / f"{top}.py", plugins_dir / top]
    if not any(path.exists() for path in ours):
        return
    location = _location(sys.modules[top])
    if location is not None and location.is_relative_to(plugins_dir.resolve()):
        return
    for name in [n for n in sys.modules if n == top or n.startswith(f"{top}.")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def resolve(name: str, plugins_dir: Path | None = None) -> EntryPoint:
    """Import `package.module:function`, from the plugins directory or the environment."""
    module_name, _, attribute = name.partition(":")
    on_import_path(plugins_dir)
    _from_plugins(module_name, plugins_dir)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: anything may go wrong while importing it
        where = f" or the plugins directory {plugins_dir}" if plugins_dir else ""
        raise EntryPointFailed(
            f"entry point {name}: cannot import {module_name} from the trainer's "
            f"environment{where}: {type(exc).__name__}: {exc}"
        ) from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        raise EntryPointFailed(f"entry point {name}: {module_name} has no function {attribute}")
    code_path, requirement = _dependency(module, plugins_dir)
    return EntryPoint(name, function, code_path, requirement)


def _dependency(module: ModuleType, plugins_dir: Path | None) -> tuple[Path | None, str | None]:
    """From the plugins directory (or any file outside an installed distribution): the module
    file, or its top-level package's directory, to ship with the model. From an installed
    distribution: its name and version, to install where the model is loaded."""
    top = module.__name__.partition(".")[0]
    root = sys.modules[top]
    location = _location(root)
    inside_plugins = (
        location is not None and plugins_dir is not None and location.is_relative_to(plugins_dir)
    )
    if not inside_plugins:
        requirement = distribution_requirement(top)
        if requirement is not None:
            return None, requirement
    return location, None


def _location(root: ModuleType) -> Path | None:
    """A top-level module's file, or a package's directory; None for a built-in module."""
    file = getattr(root, "__file__", None)
    if file is None:
        return None
    path = Path(file).resolve()
    return path.parent if path.name == "__init__.py" else path


def distribution_requirement(top_level: str) -> str | None:
    """`distribution==version` of the installed distribution that provides `top_level`."""
    for dist in packages_distributions().get(top_level, []):
        try:
            return f"{dist}=={version(dist)}"
        except PackageNotFoundError:
            continue
    return None


def train(
    entry: EntryPoint, spec: DatasetSpec, x: pd.DataFrame, y: pd.Series, params: dict[str, Any]
) -> Any:
    """Call the user's function and check that what it returns is a model streamops can
    judge and log."""
    try:
        model = entry.function(x.copy(), y.copy(), spec, **params)
    except Exception as exc:  # the user's code: any failure fails this training only
        raise EntryPointFailed(
            f"entry point {entry.name} raised {type(exc).__name__}: {exc}"
        ) from exc
    assert spec.training is not None
    check_model(entry.name, model, spec.training.task)
    return model


def flavor(model: Any) -> str:
    """How a model is logged: an `mlflow.pyfunc.PythonModel` as python_function, anything else
    (a scikit-learn-API estimator or pipeline) as sklearn."""
    return PYFUNC if is_python_model(model) else SKLEARN


def check_model(name: str, model: Any, task: Task) -> None:
    """A PythonModel, or a fitted scikit-learn-API model; a classifier with predict_proba and
    classes_ (the metrics that judge it need class probabilities)."""
    if flavor(model) == PYFUNC:
        return
    if not callable(getattr(model, "predict", None)):
        raise EntryPointFailed(
            f"entry point {name} returned {type(model).__name__}, not a model: return a fitted "
            "scikit-learn-API estimator or pipeline, or an mlflow.pyfunc.PythonModel"
        )
    _check_fitted(name, model)
    if task == "classification":
        missing = [a for a in ("predict_proba", "classes_") if not hasattr(model, a)]
        if missing:
            raise EntryPointFailed(
                f"entry point {name} returned a {type(model).__name__} without "
                f"{' and '.join(missing)}: a classifier is judged on class probabilities "
                "(roc_auc, log_loss), so it must offer predict_proba and classes_ (or be an "
                "mlflow.pyfunc.PythonModel, judged on its labels only)"
            )


def _check_fitted(name: str, model: Any) -> None:
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(model, BaseEstimator):
        return
    try:
        check_is_fitted(model)
    except NotFittedError as exc:
        raise EntryPointFailed(
            f"entry point {name} returned an unfitted {type(model).__name__}: fit it on the "
            "rows it was given before returning it"
        ) from exc
