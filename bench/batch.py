"""Batch scoring through Redis Streams against the model's own predict, in one run.

    python bench/batch.py [--rows 1000000] [--replicas 2] [--repeat 3] [--workdir DIR]

Model: RandomForestClassifier (100 trees, max_depth 10) on 20 float features, registered in a
local MLflow server and put in production. Input: a Parquet file of `--rows` rows (row groups
of 100,000, the default chunk size). Then, each `--repeat` times, alternating:

- baseline: one process loads the same model version from MLflow and calls `predict` once on
  all the rows, already in memory (the clock covers the call only);
- streamops: `--replicas` `streamops predictor` processes (started once, on this machine) score
  a `score-requested` job for the file; the clock runs from the XADD to the job being done
  (plan, chunks read and scored by both replicas, parts assembled into the output, `scored`).

Prints rows/s of each (medians), and their ratio (target >= 1.6: 80% of two cores, issue 12).
Figures are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import common

FEATURES = 20
MODEL = "bench-rf"
ESTIMATOR = {"n_estimators": 100, "max_depth": 10, "random_state": 0}


def write_spec(datasets: Path) -> None:
    training = common.forest(ESTIMATOR, "accuracy", model_name=MODEL)
    common.write_spec(datasets, "bench", [f"f{i}" for i in range(FEATURES)], training=training)


def frame(rows: int, seed: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    data = {f"f{i}": rng.normal(0, 1, rows) for i in range(FEATURES)}
    signal = data["f0"] + 0.5 * data["f1"] - 0.7 * data["f2"] + rng.normal(0, 0.5, rows)
    return pd.DataFrame({**data, "label": (signal > 0).astype(int)})


def write_input(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame(rows, seed=7), preserve_index=False)
    pq.write_table(table, path, row_group_size=100_000)


def train_and_register(mlflow_url: str, datasets: Path) -> int:
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient

    from shared.datasets import feature_frame, load_spec
    from trainer.training import pipeline

    spec = load_spec(datasets, "bench")
    train = frame(20_000, seed=1)
    model = pipeline(spec).fit(feature_frame(spec, train), train["label"])
    mlflow.set_tracking_uri(mlflow_url)
    mlflow.set_experiment("bench")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=MODEL,
            skops_trusted_types=["numpy.dtype", "sklearn.tree._tree.Tree"],
            pip_requirements=["scikit-learn"],
        )
    version = int(info.registered_model_version)
    MlflowClient(tracking_uri=mlflow_url).set_registered_model_alias(
        MODEL, "production", str(version)
    )
    return version


def child_baseline(mlflow_url: str, version: int, path: Path, datasets: Path) -> None:
    """In a fresh process: the same model version, `predict` on every row in one call."""
    import pyarrow.parquet as pq

    from shared.datasets import feature_frame, load_spec
    from shared.registry import MlflowRegistry

    spec = load_spec(datasets, "bench")
    model = MlflowRegistry(mlflow_url).load(MODEL, version)
    features = feature_frame(spec, pq.read_table(path).to_pandas())
    started = time.perf_counter()
    predictions = model.predict(features)
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": len(predictions), "seconds": seconds}))


def measure_baseline(mlflow_url: str, version: int, path: Path, datasets: Path) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", mlflow_url, str(version), str(path), str(datasets)]
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure_stream(client: Any, path: Path) -> dict[str, Any]:
    from shared.events import ParquetInput, ScoreRequested
    from streamops.client import publish, wait_for_job

    job_id = f"bench-{uuid.uuid4().hex[:8]}"
    event = ScoreRequested(job_id=job_id, model_name=MODEL, input=ParquetInput(uri=str(path)))
    started = time.perf_counter()
    publish(client, event)
    status = wait_for_job(client, job_id, timeout=1800, interval=0.02)
    seconds = time.perf_counter() - started
    if status is None or status.status != "done":
        raise SystemExit(f"the scoring job did not finish: {status}")
    return {"rows": status.rows, "seconds": seconds, "chunks": status.chunks}


def start_replicas(stack: Any, env: dict[str, str], count: int, client: Any) -> None:
    from streamops.stack import wait_for

    for n in range(count):
        stack.start_service(f"predictor-{n}", "predictor", env)
    wait_for(
        lambda: len(client.keys("streamops:heartbeat:predictor:*")) >= count,
        180,
        f"{count} predictors (logs in {stack.log('x').parent})",
    )


def run(args: argparse.Namespace, work: Path) -> None:
    import redis

    from streamops.stack import local_stack

    datasets = work / "datasets"
    write_spec(datasets)
    source = work / "in" / "rows.parquet"
    source.parent.mkdir()
    print(f"generating {args.rows:,} rows ...", flush=True)
    write_input(source, args.rows)
    with local_stack(work) as stack:
        redis_url = stack.start_redis(persistent=False)
        mlflow_url = stack.start_mlflow()
        print("training and registering the model ...", flush=True)
        version = train_and_register(mlflow_url, datasets)
        env = {
            "STREAMOPS_REDIS_URL": redis_url,
            "STREAMOPS_MLFLOW_TRACKING_URI": mlflow_url,
            "STREAMOPS_DATASETS_DIR": str(datasets),
            "STREAMOPS_FEATURE_STORE_ROOT": str(work / "store"),
            "STREAMOPS_PREDICTOR_SCORE_ROOTS": str(source.parent),
            "STREAMOPS_LOG_LEVEL": "WARNING",
        }
        client = redis.Redis.from_url(redis_url)
        start_replicas(stack, env, args.replicas, client)
        bases, ours = [], []
        for n in range(args.repeat):
            bases.append(measure_baseline(mlflow_url, version, source, datasets))
            ours.append(measure_stream(client, source))
            print(f"run {n + 1}: baseline {bases[-1]['seconds']:.2f} s, "
                  f"stream {ours[-1]['seconds']:.2f} s", flush=True)  # fmt: skip
    report(args, bases, ours)


def report(
    args: argparse.Namespace, bases: list[dict[str, Any]], ours: list[dict[str, Any]]
) -> None:
    base_s = statistics.median(r["seconds"] for r in bases)
    our_s = statistics.median(r["seconds"] for r in ours)
    base_rate, our_rate = args.rows / base_s, args.rows / our_s
    ratio = our_rate / base_rate
    print(
        f"input: {args.rows:,} rows x {FEATURES} float features, RandomForest 100 trees depth 10; "
        f"{ours[0]['chunks']} chunks, {args.replicas} replicas, {os.cpu_count()} cores; "
        f"median of {args.repeat} runs each"
    )
    print(f"{'path':<52}{'rows/s':>12}{'seconds':>10}")
    print(
        f"{'baseline: model.predict, one call, one process':<52}{base_rate:>12,.0f}{base_s:>10.2f}"
    )
    print(f"{'streamops: score-requested -> scored (file)':<52}{our_rate:>12,.0f}{our_s:>10.2f}")
    print(f"ratio streamops/baseline: {ratio:.2f} (target >= 1.6): "
          f"{'PASS' if ratio >= 1.6 else 'MISS'}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; medians are shown")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, version, path, datasets = args.child
        child_baseline(url, int(version), Path(path), Path(datasets))
        return
    with tempfile.TemporaryDirectory(prefix="streamops-bench-", dir=args.workdir) as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
