"""The BentoML baseline of bench/serve.py: the registered pipeline behind an adaptive-batching API.

Run by `bentoml serve bentoml_service:Baseline` in the bench's own venv (bench/serve.py creates
it: BentoML is no dependency of streamops). The model is the version that `streamops` serves,
loaded from the same MLflow registry (`models:/NAME@production`) with mlflow's scikit-learn
flavor, as a BentoML user who trains with MLflow would load it.

Request: `{"rows": [[f00, ..., f19], ...]}`; answer: the predicted labels. `batchable=True`
makes BentoML merge the rows of concurrent requests into one call along axis 0, with its
default adaptive batching parameters: the setting a BentoML user picks for micro-batching.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np

WORKERS = int(os.environ.get("BENCH_BENTOML_WORKERS", "2"))


@bentoml.service(workers=WORKERS)
class Baseline:
    def __init__(self) -> None:
        import mlflow
        import mlflow.sklearn

        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        self.model = mlflow.sklearn.load_model(os.environ["BENCH_MODEL_URI"])
        self.columns = list(self.model.feature_names_in_)

    @bentoml.api(batchable=True)
    def predict(self, rows: np.ndarray) -> np.ndarray:
        import pandas as pd

        # The pipeline was fitted on named columns: the same frame mlflow and streamops build.
        return np.asarray(self.model.predict(pd.DataFrame(rows, columns=self.columns)))
