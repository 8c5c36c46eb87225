"""Fitting and judging a model: plain scikit-learn, no MLflow, no broker."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from shared.datasets import METRICS, DatasetSpec, TrainingSpec, feature_frame
from shared.errors import ConfigError
from trainer import estimators


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
    """Hold-out metrics: accuracy, F1, ROC AUC, log loss; or RMSE, MAE, R²."""
    from sklearn import metrics

    if task == "regression":
        predicted = model.predict(x)
        return {
            "rmse": float(math.sqrt(metrics.mean_squared_error(y, predicted))),
            "mae": float(metrics.mean_absolute_error(y, predicted)),
            "r2": float(metrics.r2_score(y, predicted)),
        }
    predicted = model.predict(x)
    proba = model.predict_proba(x)
    classes = list(model.classes_)
    binary = len(classes) == 2
    out = {
        "accuracy": float(metrics.accuracy_score(y, predicted)),
        "f1": float(
            metrics.f1_score(
                y,
                predicted,
                average="binary" if binary else "macro",
                pos_label=classes[-1] if binary else 1,
            )
        ),
        "log_loss": float(metrics.log_loss(y, proba, labels=classes)),
    }
    if len(np.unique(y)) > 1:
        out["roc_auc"] = float(
            metrics.roc_auc_score(y, proba[:, 1])
            if binary
            else metrics.roc_auc_score(y, proba, multi_class="ovr", labels=classes)
        )
    return out


def fit(spec: DatasetSpec, frame: pd.DataFrame) -> Trained:
    """Split, fit and evaluate on the hold-out rows."""
    training = training_spec(spec)
    if frame[spec.target].nunique() < 2 and training.task == "classification":
        raise ConfigError(f"dataset {spec.name!r}: the target has fewer than two classes")
    parts = split(spec, frame)
    started = time.perf_counter()
    model = pipeline(spec).fit(parts.x_train, parts.y_train)
    seconds = time.perf_counter() - started
    return Trained(
        model, evaluate(model, training.task, parts.x_test, parts.y_test), parts, seconds
    )


def better(task: str, metric: str, new: float, old: float, margin: float) -> bool:
    """Whether `new` is not worse than `old` by more than `margin` on `metric`."""
    if METRICS[task][metric]:
        return new >= old - margin
    return new <= old + margin
