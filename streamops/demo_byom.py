"""The bring-your-own-model half of `make demo`: a dataset trained by the user's own code (an
entry point with its feature engineering and LightGBM), then a model trained elsewhere,
registered in MLflow as a notebook would, and served with no restart."""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
from rich.console import Console

from shared.datasets import load_spec
from shared.events import DataArrived, DataIngested
from streamops.client import ingest_and_wait
from streamops.demo_serving import failed, step, wait_event
from streamops.stack import wait_for

console = Console()
# The bundled dataset whose spec names an entry point (datasets/plugins/), not an estimator.
EXAMPLE = "rentals"
# The model a "notebook" registers in step 11, with no dataset spec.
OUTSIDE = "basket-lgbm"


def bring_your_own(
    client: redis.Redis, http: httpx.Client, mlflow_url: str, datasets: Path, timeout: float
) -> bool:
    return _entry_point(client, http, datasets, timeout) and _outside(http, mlflow_url, timeout)


def _entry_point(client: redis.Redis, http: httpx.Client, datasets: Path, timeout: float) -> bool:
    spec = load_spec(datasets, EXAMPLE)
    assert spec.training is not None
    source = next((datasets / EXAMPLE).glob("*.csv"))
    step(
        10,
        f"your own training code: {EXAMPLE} trains through its entry point "
        f"{spec.training.entry_point} (feature engineering and LightGBM)",
    )
    arrived = DataArrived(dataset=EXAMPLE, source=f"{EXAMPLE}/{source.name}")
    ingested = ingest_and_wait(client, arrived, timeout)
    if not isinstance(ingested, DataIngested):
        return failed(ingested)
    trained = wait_event(client, "model-trained", ingested.correlation_id, timeout)
    if trained is None:
        return failed("no model-trained event")
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(trained["metrics"].items()))
    console.print(
        f"-> {EXAMPLE} v{ingested.version} ({ingested.rows} rows) trained by the entry point: "
        f"{spec.model_name} v{trained['model_version']}: {metrics}"
    )
    if wait_event(client, "model-promoted", ingested.correlation_id, 30) is None:
        return failed(f"{spec.model_name} was not promoted: {trained['gate_reasons']}")
    rows = _csv_rows(source, 2, drop=spec.target)
    answer = _answer(http, spec.model_name, rows, timeout)
    if answer is None:
        return failed(f"{spec.model_name} did not answer")
    console.print(f"-> POST /v1/models/{spec.model_name}/predict: {_shown(answer)}")
    return True


def _outside(http: httpx.Client, mlflow_url: str, timeout: float) -> bool:
    step(
        11,
        f"a model trained elsewhere: a notebook fits LightGBM, logs it with "
        f"mlflow.lightgbm.log_model and a signature, registers {OUTSIDE!r} and sets its "
        "production alias with MlflowClient; no streamops code, no restart",
    )
    with _quiet():
        rows = _notebook(mlflow_url)
    started = time.monotonic()
    answer = _answer(http, OUTSIDE, rows, timeout)
    if answer is None:
        return failed(f"{OUTSIDE} did not answer")
    paths = http.get("/openapi.json").json()["paths"]
    console.print(
        f"-> served {time.monotonic() - started:.1f} s after the alias was set; "
        f"/openapi.json lists /v1/models/{OUTSIDE}/predict: "
        f"{f'/v1/models/{OUTSIDE}/predict' in paths}"
    )
    console.print(f"-> POST /v1/models/{OUTSIDE}/predict: {_shown(answer)}")
    return True


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's chatter (runs, registrations, schema hints) off the demo's story."""
    import mlflow  # noqa: F401  (its import sets its logger's level: set ours after)

    mlflow_log = logging.getLogger("mlflow")
    level = mlflow_log.level
    mlflow_log.setLevel(logging.WARNING)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        mlflow_log.setLevel(level)


def _notebook(mlflow_url: str) -> list[dict[str, Any]]:
    """What a data scientist's notebook does, with MLflow's own API only; two request rows."""
    import lightgbm
    import mlflow
    import mlflow.lightgbm
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    rng = np.random.default_rng(7)
    x = pd.DataFrame(
        {
            "basket_value": np.round(rng.gamma(2.0, 30.0, 2000), 2),
            "items": rng.integers(1, 20, 2000).astype("int64"),
            "returning": rng.random(2000) < 0.4,
        }
    )
    y = (x["basket_value"] / x["items"] + 15 * x["returning"] > 20).astype(int)
    model = lightgbm.LGBMClassifier(n_estimators=40, verbose=-1).fit(x, y)
    mlflow.set_tracking_uri(mlflow_url)
    mlflow.set_experiment("notebook")
    with mlflow.start_run():
        info = mlflow.lightgbm.log_model(
            model,
            name="model",
            signature=infer_signature(x, model.predict(x)),
            input_example=x.head(3),
            registered_model_name=OUTSIDE,
            pip_requirements=["lightgbm", "scikit-learn"],
        )
    version = str(info.registered_model_version)
    MlflowClient(tracking_uri=mlflow_url).set_registered_model_alias(OUTSIDE, "production", version)
    return [
        {"basket_value": 80.0, "items": 2, "returning": True},
        {"basket_value": 30.0, "items": 12, "returning": False},
    ]


def _answer(
    http: httpx.Client, model: str, rows: list[dict[str, Any]], timeout: float
) -> dict[str, Any] | None:
    """The model's answer, once a replica serves it (the gateway's readiness says so: asking
    the predict route before would only collect 404s) and the gateway has its route."""
    found: dict[str, Any] = {}

    def served() -> bool:
        ready = http.get("/readyz").json()
        return any(model in models for models in ready.get("predictors", {}).values())

    def answered() -> bool:
        if not served():
            return False
        response = http.post(f"/v1/models/{model}/predict", json={"rows": rows})
        if response.status_code == 200:
            found.update(response.json())
        return bool(found)

    try:
        wait_for(answered, timeout, f"{model} answering")
    except TimeoutError:
        return None
    return found


def _shown(answer: dict[str, Any]) -> str:
    predictions = answer["predictions"]
    probabilities = answer.get("probabilities") or [None] * len(predictions)
    shown = [
        str(label) if p is None else f"{label} (p={max(p):.2f})"
        for label, p in zip(predictions, probabilities, strict=True)
    ]
    return f"v{answer['model_version']} answered " + ", ".join(shown)


def _csv_rows(path: Path, count: int, drop: str) -> list[dict[str, Any]]:
    """The first rows of a CSV as request rows (empty cells as null: missing)."""
    import json

    import pandas as pd

    head = pd.read_csv(path, nrows=count).drop(columns=[drop])
    rows: list[dict[str, Any]] = json.loads(head.to_json(orient="records", date_format="iso"))
    return rows
