"""The rentals dataset's own training code: feature engineering and LightGBM, in a pipeline.

The bundled example of a training entry point (docs/training.md), named in
datasets/rentals/spec.yaml as `entry_point: "rentals_features:train"`. The trainer imports it
from its plugins directory (`<datasets dir>/plugins` by default) and calls `train` with the
training rows; streamops does the split, the metrics, the gate and the MLflow logging around
it, and ships this file with the model so that a predictor can load it.

Copy it to start your own: the function takes the feature rows, the target and the dataset
spec (plus the spec's `entry_params`) and returns a fitted scikit-learn-API model. Nothing in
it knows about MLflow or Redis. The transformer's fitted state is plain Python (dicts, lists,
floats), which skops saves without pickling code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline

# Vehicle classes from the cheapest up: an order the model can split on, known without data.
CLASS_ORDER = {"economy": 0, "compact": 1, "midsize": 2, "suv": 3, "van": 4, "premium": 5}


class RentalFeatures(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Booking columns -> numeric model features.

    - ratios: the price per day, the deposit against the total price, the price against the
      class's usual price, the customer's past cancellation rate;
    - date parts of the pickup (a text date): weekday, weekend, month;
    - target-free encodings learned in `fit`: each branch's share of the bookings (frequency
      encoding: a branch never seen gets 0), the class's rank, the channel as a code.
    """

    def __init__(self, smoothing: float = 1.0) -> None:
        self.smoothing = smoothing

    def fit(self, x: pd.DataFrame, y: Any = None) -> RentalFeatures:
        shares = x["branch"].value_counts(normalize=True)
        self.branch_share_ = {str(k): float(v) for k, v in shares.items()}
        per_day = x["total_price"] / x["rental_days"]
        by_class = per_day.groupby(x["vehicle_class"]).median()
        self.class_price_ = {str(k): float(v) for k, v in by_class.items()}
        self.channels_ = sorted(str(c) for c in x["channel"].unique())
        return self

    def transform(self, x: pd.DataFrame) -> pd.DataFrame:
        pickup = pd.to_datetime(x["pickup_date"], format="%Y-%m-%d", errors="coerce")
        per_day = x["total_price"] / x["rental_days"]
        usual = x["vehicle_class"].map(self.class_price_).astype("float64")
        prior = x["prior_rentals"].astype("float64")
        out = pd.DataFrame(
            {
                "lead_days": x["lead_days"].astype("float64"),
                "rental_days": x["rental_days"].astype("float64"),
                "price_per_day": per_day,
                "deposit_share": x["deposit"] / x["total_price"],
                "price_vs_class": per_day / usual,
                "cancel_rate": x["prior_cancellations"] / (prior + self.smoothing),
                "prior_rentals": prior,
                "insurance": x["insurance"].astype("float64"),
                "pickup_weekday": pickup.dt.day_of_week.astype("float64"),
                "pickup_weekend": (pickup.dt.day_of_week >= 5).astype("float64"),
                "pickup_month": pickup.dt.month.astype("float64"),
                "branch_share": x["branch"].map(self.branch_share_).fillna(0.0).astype("float64"),
                "class_rank": x["vehicle_class"].map(CLASS_ORDER).astype("float64"),
                "channel": x["channel"].map({c: float(i) for i, c in enumerate(self.channels_)}),
            },
            index=x.index,
        )
        return out.replace([np.inf, -np.inf], np.nan)


def train(x: pd.DataFrame, y: pd.Series, spec: Any, **params: Any) -> Pipeline:
    """The entry point: a fitted pipeline of the features above and LightGBM; `params` (the
    spec's `entry_params`) go to LGBMClassifier."""
    booster = LGBMClassifier(random_state=spec.training.seed, n_jobs=1, verbose=-1, **params)
    model = Pipeline([("features", RentalFeatures()), ("model", booster)])
    return model.fit(x, y)
