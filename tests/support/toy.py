"""A toy dataset and model for scoring tests: two floats and a flag, a label that a logistic
regression learns, and the model as a replica would serve it."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from predictor.cache import Served
from shared.datasets import DatasetSpec, feature_frame, spec_schema

TOY_SPEC = """
name: toy
target: label
columns:
  - {name: a, type: float}
  - {name: b, type: float}
  - {name: flag, type: bool}
  - {name: label, type: int, allowed: [0, 1]}
training:
  task: classification
  estimator: {name: LogisticRegression}
  metric: accuracy
"""


def toy_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    return pd.DataFrame(
        {"a": a, "b": b, "flag": rng.random(rows) < 0.5, "label": (a + b > 0).astype(int)}
    )


def toy_served(spec: DatasetSpec, version: int, rows: int = 500) -> Served:
    """A logistic regression fitted on `rows` toy rows, in service as `version`."""
    from sklearn.linear_model import LogisticRegression

    frame = toy_frame(rows)
    model = LogisticRegression().fit(feature_frame(spec, frame), frame["label"])
    return Served(
        "toy", version, model, spec_schema(spec), tuple(model.classes_), datetime.now(UTC)
    )
