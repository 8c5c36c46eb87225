"""`make demo`: the main job, end to end, as far as it exists.

Starts a local Redis and MLflow server (unless STREAMOPS_REDIS_URL / REDIS_URL and
STREAMOPS_MLFLOW_TRACKING_URI / MLFLOW_TRACKING_URI name them), the ingestor, the trainer, a
predictor and the gateway as processes of their own (what `streamops up` starts), then:

1. announces the bundled churn sample (5,000 rows, 8 broken on purpose) on `data-arrived`,
   as an outside producer with a plain Redis client would;
2. watches the trainer train on it, register the model in MLflow, judge it and promote it;
3. asks the gateway for predictions over HTTP;
4. announces the sample again: the same content makes no second version, and no retraining;
5. announces a CSV with a column missing: the batch is rejected, no version;
6. sends a message that is not an event: it lands on the dead-letter stream;
7. uploads a second version through the gateway, watches it train and go into production
   (promoted by hand through the gateway if the quality gate keeps the first);
8. predicts again: the new version answers, the predictor was never restarted;
9. scores a Parquet file through the `score-requested` stream;
10. announces the second bundled sample, whose spec trains through an entry point (the user's
    own feature engineering and LightGBM, in datasets/plugins/), and predicts with it;
11. registers a LightGBM model the way a notebook would (MLflow's API only, no dataset spec)
    and gives it the `production` alias: every replica loads it, the gateway answers for it;

printing what happened after each step and where to look, then stops what it started.
Everything it writes is under var/demo/ (wiped at the start, kept at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from rich.console import Console
from rich.table import Table

from shared.events import DataArrived, DataIngested, DataRejected
from shared.keys import dead_letter_stream
from shared.settings import BUNDLED_DATASETS, REPO_ROOT, CommonSettings
from streamops.client import ingest_and_wait
from streamops.demo_byom import bring_your_own
from streamops.demo_metrics import show_metrics
from streamops.demo_serving import failed, predict_step, serving, show_runtime, step, wait_event
from streamops.stack import Stack, bring_up, local_stack, wait_for

console = Console()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="streamops demo")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "var" / "demo")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--keep", action="store_true", help="keep everything running at the end")
    args = parser.parse_args(argv)
    workdir: Path = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    with local_stack(workdir) as stack:
        console.print("starting Redis, MLflow, the ingestor, the trainer, a predictor, the gateway")
        # The demo inspects the feature store and the inbox it made under --workdir, so those
        # two are its own whatever is exported; every other exported setting is honoured.
        own = ("STREAMOPS_FEATURE_STORE_ROOT", "STREAMOPS_GATEWAY_INBOX")
        environ = {k: v for k, v in os.environ.items() if k not in own}
        running = bring_up(stack, ("ingestor", "trainer", "predictor", "gateway"), environ=environ)
        url, mlflow_url = running.redis_url, running.mlflow_url
        console.print(
            f"[bold]Redis[/bold] {url}, [bold]MLflow[/bold] {mlflow_url}, "
            f"[bold]gateway[/bold] {running.gateway_url}, "
            f"services' logs in {stack.log('ingestor').parent}"
        )
        client = redis.Redis.from_url(url)
        console.print()
        assert running.gateway_url is not None
        with httpx.Client(base_url=running.gateway_url, timeout=30) as http:
            ok = (
                _story(client, http, workdir, args.timeout)
                and serving(client, http, stack, workdir, args.timeout)
                and bring_your_own(
                    client, http, mlflow_url, CommonSettings().datasets_dir, args.timeout
                )
            )
        endpoints = {**running.metrics, "gateway": f"{running.gateway_url}/metrics"}
        if ok:
            console.rule("[bold]what the services' /metrics say[/bold]")
            ok = show_metrics(console, endpoints)
        _where_to_look(url, mlflow_url, workdir, stack, running.gateway_url)
        console.print(
            "metrics:         " + ", ".join(f"{k} {v}" for k, v in endpoints.items()) + "\n"
            "Prometheus:      `streamops up` writes its targets for deploy/prometheus/local.yml; "
            "README.md, 'Monitoring the local processes'"
        )
        if ok and args.keep:
            console.print("\nall running; Ctrl-C stops everything")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
    return 0 if ok else 1


def _story(client: redis.Redis, http: httpx.Client, workdir: Path, timeout: float) -> bool:
    store = workdir / "feature-store"
    step(
        1,
        "announce the churn sample: XADD data-arrived * __data__ "
        '\'{"dataset":"churn","source":"churn/churn.csv"}\'',
    )
    first = ingest_and_wait(client, DataArrived(dataset="churn", source="churn/churn.csv"), timeout)
    if not isinstance(first, DataIngested):
        return failed(first)
    console.print(
        f"-> [green]data-ingested[/green]: churn v{first.version}, {first.rows} rows "
        f"accepted, {first.quarantined_rows} quarantined"
    )
    _show_quarantine(first)
    console.print("the event, as `XRANGE data-ingested - +` shows it:")
    console.print_json(first.model_dump_json())
    if not _training(client, first, timeout):
        return False
    if not predict_step(3, http):
        return False

    step(4, "announce the same file again (no new version, so nothing to retrain)")
    again = ingest_and_wait(client, DataArrived(dataset="churn", source="churn/churn.csv"), timeout)
    if not isinstance(again, DataIngested):
        return failed(again)
    versions = sorted(p.name for p in (store / "churn" / "versions").iterdir())
    console.print(
        f"-> data-ingested with new_version={again.new_version}: still v{again.version}"
        f" (versions on disk: {', '.join(versions)})"
    )

    step(5, "announce a CSV whose 'plan' column is missing")
    broken = workdir / "inbox" / "churn-no-plan.csv"
    _drop_column(BUNDLED_DATASETS / "churn" / "churn.csv", broken, "plan")
    rejected = ingest_and_wait(client, DataArrived(dataset="churn", source=str(broken)), timeout)
    if not isinstance(rejected, DataRejected):
        return failed(rejected)
    console.print(
        f"-> [yellow]data-rejected[/yellow] ({rejected.kind}): {rejected.reason}: "
        f"{'; '.join(rejected.details)}"
    )

    step(6, "send something that is not an event: XADD data-arrived * __data__ 'hello'")
    before = client.xlen(dead_letter_stream("data-arrived"))
    client.xadd("data-arrived", {"__data__": b"hello"})
    wait_for(
        lambda: client.xlen(dead_letter_stream("data-arrived")) > before, timeout, "the dead letter"
    )
    newest: Any = client.xrevrange(dead_letter_stream("data-arrived"), count=1)
    _, fields = newest[0]
    letter = json.loads(fields[b"__data__"])
    console.print(
        f"-> [red]{{data-arrived}}.dlq[/red]: {letter['reason']} "
        f"(payload kept: {letter['payload']})"
    )
    return True


def _training(client: redis.Redis, ingested: DataIngested, timeout: float) -> bool:
    """The trainer reacts to data-ingested: show its verdict and the promotion."""
    step(2, "the trainer trains on the new version, registers it in MLflow and judges it")
    trained = wait_event(client, "model-trained", ingested.correlation_id, timeout)
    if trained is None:
        return failed("no model-trained event")
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(trained["metrics"].items()))
    verdict = "passed" if trained["gate_passed"] else "failed"
    console.print(
        f"-> [green]model-trained[/green]: {trained['model_name']} "
        f"v{trained['model_version']} (run {trained['run_id'][:8]}): {metrics}"
    )
    console.print(f"   gate {verdict}: {'; '.join(trained['gate_reasons'])}")
    promoted = wait_event(client, "model-promoted", ingested.correlation_id, 30)
    if promoted is None:
        console.print("-> not promoted")
        return not trained["gate_passed"]
    console.print(
        f"-> [green]model-promoted[/green]: {promoted['model_name']} "
        f"v{promoted['version']} is in production ({promoted['reason']})"
    )
    show_runtime(client, promoted["model_name"], promoted["version"])
    return True


def _show_quarantine(result: DataIngested) -> None:
    if result.quarantine_path is None:
        return
    import pyarrow.parquet as pq

    table = Table("row", "column", "value", "reason", title="quarantine")
    for line in pq.read_table(result.quarantine_path).to_pylist():
        table.add_row(str(line["row"]), line["column"], line["value"] or "(empty)", line["reason"])
    console.print(table)


def _drop_column(source: Path, target: Path, column: str) -> None:
    with source.open(newline="") as f_in, target.open("w", newline="") as f_out:
        reader = csv.DictReader(f_in)
        fields = [f for f in reader.fieldnames or [] if f != column]
        writer = csv.DictWriter(f_out, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for i, row in enumerate(reader):
            if i == 100:
                break
            writer.writerow(row)


def _where_to_look(
    url: str, mlflow_url: str, workdir: Path, stack: Stack, gateway_url: str | None
) -> None:
    port = url.rsplit(":", 1)[1].split("/", maxsplit=1)[0]
    console.rule("[bold]where to look[/bold]")
    console.print(
        f"gateway API:     {gateway_url}/docs (OpenAPI, with the churn model's real features)\n"
        f"MLflow UI:       {mlflow_url} (experiment 'churn', model 'churn'; it stops with "
        f"the demo: `make demo ARGS=--keep` keeps everything up)\n"
        f"feature store:   {workdir / 'feature-store' / 'churn'} (manifest.json, versions/)\n"
        f"service logs:    {stack.log('ingestor').parent}\n"
        f"events:          redis-cli -p {port} XRANGE model-promoted - +\n"
        f"models:          STREAMOPS_MLFLOW_TRACKING_URI={mlflow_url} "
        f".venv/bin/streamops models churn\n"
        f"versions:        STREAMOPS_FEATURE_STORE_ROOT={workdir / 'feature-store'} "
        f".venv/bin/streamops versions churn"
    )


if __name__ == "__main__":
    sys.exit(main())
