"""Models trained and registered the way a notebook would, with no streamops at all.

Run as a script (`python -m tests.support.outside KIND --tracking-uri URI --name NAME`), in a
process of its own, so nothing of streamops is imported or configured: it prints the version
registered. With `--production` it also sets the `production` alias, as a user would with
MlflowClient. Kinds: lightgbm (a classifier with a signature), pyfunc (a custom PythonModel
regressor over a frame), unsigned (a scikit-learn model logged with no signature), xgboost.
"""

from __future__ import annotations

import argparse
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature
from mlflow.pyfunc.model import PythonModel

# Rows a request to these models carries (the same columns for every kind).
ROW = {"amount": 120.5, "age": 41, "visits": 3}


def frame(rows: int = 2000, seed: int = 3) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(
        {
            "amount": np.round(rng.gamma(2.0, 60.0, rows), 2),
            "age": rng.integers(18, 80, rows).astype("int64"),
            "visits": rng.poisson(2.0, rows).astype("int64"),
        }
    )
    logit = 0.01 * (x["amount"] - 120) - 0.03 * (x["age"] - 45) + 0.4 * x["visits"] - 0.5
    y = pd.Series((rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int), name="bought")
    return x, y


class Pricing(PythonModel):
    """A regressor over a frame: the expected basket value of a visit."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return (
            model_input["amount"] * 0.5 + model_input["visits"] * 10.0 - model_input["age"] * 0.1
        ).to_numpy()


def log_lightgbm(name: str, seed: int) -> Any:
    import lightgbm
    import mlflow.lightgbm

    x, y = frame(seed=seed)
    model = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1).fit(x, y)
    return mlflow.lightgbm.log_model(
        model,
        name="model",
        signature=infer_signature(x, model.predict(x)),
        input_example=x.head(3),
        registered_model_name=name,
        pip_requirements=["lightgbm", "scikit-learn"],
    )


def log_xgboost(name: str, seed: int) -> Any:
    import mlflow.xgboost
    import xgboost

    x, y = frame(seed=seed)
    model = xgboost.XGBClassifier(n_estimators=20).fit(x, y)
    return mlflow.xgboost.log_model(
        model,
        name="model",
        signature=infer_signature(x, model.predict(x)),
        registered_model_name=name,
        pip_requirements=["xgboost"],
    )


def log_pyfunc(name: str, seed: int) -> Any:
    x, _ = frame(rows=50, seed=seed)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=Pricing(),
        signature=infer_signature(x, Pricing().predict(None, x)),
        input_example=x.head(3),
        registered_model_name=name,
        pip_requirements=["pandas"],
    )


def log_unsigned(name: str, seed: int) -> Any:
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    x, y = frame(seed=seed)
    return mlflow.sklearn.log_model(
        LogisticRegression(max_iter=500).fit(x, y),
        name="model",
        registered_model_name=name,
        pip_requirements=["scikit-learn"],
    )


KINDS = {
    "lightgbm": log_lightgbm,
    "xgboost": log_xgboost,
    "pyfunc": log_pyfunc,
    "unsigned": log_unsigned,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--production", action="store_true")
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment(f"outside-{args.name}")
    with mlflow.start_run():
        info = KINDS[args.kind](args.name, args.seed)
    version = int(info.registered_model_version)
    if args.production:
        client = MlflowClient(tracking_uri=args.tracking_uri)
        client.set_registered_model_alias(args.name, "production", str(version))
    print(version)


if __name__ == "__main__":
    main()
