"""Fitting and judging a model: plain scikit-learn, no MLflow, no broker.

The model is the spec's built-in estimator behind the default preprocessing, or whatever the
spec's entry point returns (trainer/entry_points.py); either way the split and the hold-out
metrics are streamops' own.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shared.datasets import METRICS, DatasetSpec, TrainingSpec, feature_frame
from shared.errors import ConfigError, EntryPointFailed
from shared.model_logging import predictions
from trainer import entry_points, estimators
from trainer.entry_points import PYFUNC, SKLEARN, EntryPoint

# Metrics that need class probabilities, which a PythonModel classifier does not give.
PROBABILITY_METRICS = frozenset({"roc_auc", "log_loss"})


@dataclass
class Split:
    x_train: pd.DataFrame
    y_train: pd.Series
    x_test: pd.DataFrame
    y_test: pd.Series


@dataclass
class Trained:
    pipeline: Any
    metrics: dict[str, float]
    split: Split
    seconds: float
    flavor: str = SKLEARN  # how it is logged: sklearn, or python_function (a PythonModel)
    entry: EntryPoint | None = None  # the entry point that trained it, if any


def training_spec(spec: DatasetSpec) -> TrainingSpec:
    if spec.training is None:
        raise ConfigError(f"dataset {spec.name!r} has no training section in its spec")
    return spec.training


def features(spec: DatasetSpec, frame: pd.DataFrame) -> pd.DataFrame:
    result: pd.DataFrame = feature_frame(spec, frame)
    return result


def split(spec: DatasetSpec, frame: pd.DataFrame) -> Split:
    training = training_spec(spec)
    if training.split == "time":
        assert spec.timestamp is not None  # the spec validator guarantees it
        ordered = frame.sort_values(spec.timestamp, kind="stable")
        cut = len(ordered) - max(1, round(len(ordered) * training.holdout_fraction))
        train, test = ordered.iloc[:cut], ordered.iloc[cut:]
    else:
        from sklearn.model_selection import train_test_split

        stratify = frame[spec.target] if training.task == "classification" else None
        try:
            train, test = train_test_split(
                frame,
                test_size=training.holdout_fraction,
                random_state=training.seed,
                stratify=stratify,
            )
        except ValueError:  # a class too rare to stratify: split without it
            train, test = train_test_split(
                frame, test_size=training.holdout_fraction, random_state=training.seed
            )
    return Split(features(spec, train), train[spec.target], features(spec, test), test[spec.target])


def pipeline(spec: DatasetSpec) -> Any:
    """Default preprocessing (impute and scale numbers, impute and one-hot categories) and the
    spec's estimator."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    training = training_spec(spec)
    numeric = [c.name for c in spec.feature_columns if c.type in ("float", "int", "bool")]
    categorical = [c.name for c in spec.feature_columns if c.type == "str"]
    steps = []
    if numeric:
        steps.append(
            (
                "numeric",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                numeric,
            )
        )
    if categorical:
        steps.append(
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                categorical,
            )
        )
    if not steps:
        raise ConfigError(f"dataset {spec.name!r} has no feature columns")
    return Pipeline(
        [
            ("preprocess", ColumnTransformer(steps)),
            ("estimator", estimators.build(training.estimator, training.task)),
        ]
    )


def evaluate(model: Any, task: str, x: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    """Hold-out metrics: accuracy, F1, ROC AUC, log loss; or RMSE, MAE, R². A classifier
    without class probabilities (a PythonModel, or a champion loaded as python_function) is
    judged on its labels: accuracy and F1."""
    from sklearn import metrics

    if task == "regression":
        predicted = model.predict(x)
        return {
            "rmse": float(math.sqrt(metrics.mean_squared_error(y, predicted))),
            "mae": float(metrics.mean_absolute_error(y, predicted)),
            "r2": float(metrics.r2_score(y, predicted)),
        }
    predicted = model.predict(x)
    if not (hasattr(model, "predict_proba") and hasattr(model, "classes_")):
        return _label_metrics(y, predicted)
    proba = model.predict_proba(x)
    classes = list(model.classes_)
    binary = len(classes) == 2
    out = {
        **_label_metrics(y, predicted, classes),
        "log_loss": float(metrics.log_loss(y, proba, labels=classes)),
    }
    if len(np.unique(y)) > 1:
        out["roc_auc"] = float(
            metrics.roc_auc_score(y, proba[:, 1])
            if binary
            else metrics.roc_auc_score(y, proba, multi_class="ovr", labels=classes)
        )
    return out


def _label_metrics(
    y: pd.Series, predicted: Any, classes: list[Any] | None = None
) -> dict[str, float]:
    """Accuracy and F1 (binary: of the last class; else macro); `classes` the model's own, else
    every label seen."""
    from sklearn import metrics

    labels = np.asarray(predicted).ravel()
    if classes is None:
        classes = sorted(set(np.unique(y)) | set(np.unique(labels)))
    binary = len(classes) == 2
    return {
        "accuracy": float(metrics.accuracy_score(y, labels)),
        "f1": float(
            metrics.f1_score(
                y,
                labels,
                average="binary" if binary else "macro",
                pos_label=classes[-1] if binary else 1,
            )
        ),
    }


def fit(spec: DatasetSpec, frame: pd.DataFrame, plugins_dir: Path | None = None) -> Trained:
    """Split, fit (the built-in pipeline, or the entry point from the environment or
    `plugins_dir`) and evaluate on the hold-out rows."""
    training = training_spec(spec)
    if frame[spec.target].nunique() < 2 and training.task == "classification":
        raise ConfigError(f"dataset {spec.name!r}: the target has fewer than two classes")
    parts = split(spec, frame)
    entry = None
    started = time.perf_counter()
    if training.entry_point is None:
        estimators.check_labels(training.estimator, training.task, parts.y_train)
        model = pipeline(spec).fit(parts.x_train, parts.y_train)
    else:
        entry = entry_points.resolve(training.entry_point, plugins_dir)
        model = entry_points.train(entry, spec, parts.x_train, parts.y_train, training.entry_params)
    seconds = time.perf_counter() - started
    flavor = entry_points.flavor(model)
    if flavor == PYFUNC:
        _check_label_metrics(spec, training.entry_point)
    judged = Labels(model) if flavor == PYFUNC else model
    try:
        metrics = evaluate(judged, training.task, parts.x_test, parts.y_test)
    except Exception as exc:
        if entry is None:
            raise
        raise EntryPointFailed(
            f"entry point {entry.name}: its model failed on the hold-out rows: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return Trained(model, metrics, parts, seconds, flavor, entry)


def _check_label_metrics(spec: DatasetSpec, name: str | None) -> None:
    training = training_spec(spec)
    if training.task != "classification":
        return
    needed = {training.metric, *training.gate.minimum, *training.gate.maximum}
    wanted = sorted(needed & PROBABILITY_METRICS)
    if wanted:
        raise EntryPointFailed(
            f"entry point {name} returned an mlflow.pyfunc.PythonModel, judged on its labels "
            f"only (accuracy, f1), but the spec's metric or gate uses {wanted}: use accuracy or "
            "f1, or return a scikit-learn-API classifier (predict_proba, classes_)"
        )


class Labels:
    """A PythonModel seen as a model with `predict(x)`, as MLflow would call it once loaded."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, x: pd.DataFrame) -> Any:
        return predictions(self.model, x)


def better(task: str, metric: str, new: float, old: float, margin: float) -> bool:
    """Whether `new` is not worse than `old` by more than `margin` on `metric`."""
    if METRICS[task][metric]:
        return new >= old - margin
    return new <= old + margin
