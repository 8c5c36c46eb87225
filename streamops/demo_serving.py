"""The serving half of `make demo`: predictions over HTTP, a second version served without a
restart, a batch scored through the stream."""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import redis
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from shared.events import ParquetInput, ScoreRequested
from shared.feature_store import FeatureStore
from shared.jobs import JobStatus
from shared.settings import BUNDLED_DATASETS
from streamops.client import publish, wait_for_job
from streamops.stack import Stack, wait_for

console = Console()
MODEL = "churn"
ROWS = [
    {
        "tenure_months": 2,
        "monthly_charges": 95.0,
        "support_calls": 6,
        "usage_gb": 3.5,
        "satisfaction": 1.5,
        "plan": "premium",
        "autopay": False,
    },
    {
        "tenure_months": 60,
        "monthly_charges": 35.0,
        "support_calls": 0,
        "usage_gb": 12.0,
        "satisfaction": 4.5,
        "plan": "basic",
        "autopay": True,
    },
]


def predict_step(n: int, http: httpx.Client) -> bool:
    step(n, f"predict over HTTP: POST /v1/models/{MODEL}/predict with two customers")
    answer = _predict(http)
    if answer is None:
        return False
    body = answer.json()
    console.print(
        f"-> {answer.status_code}, X-Model-Version {answer.headers['X-Model-Version']}, "
        f"request id {body['request_id']}"
    )
    for row, label, proba in zip(ROWS, body["predictions"], body["probabilities"], strict=True):
        console.print(
            f"   tenure {row['tenure_months']:>2} months, {row['support_calls']} support calls:"
            f" churned={label} (p={proba[1]:.2f})"
        )
    return True


def serving(
    client: redis.Redis, http: httpx.Client, stack: Stack, workdir: Path, timeout: float
) -> bool:
    before = _predict(http)
    if before is None:
        return False
    old = int(before.headers["X-Model-Version"])
    pid = stack.processes["predictor"].pid
    if not _second_version(client, http, workdir, old, timeout):
        return False
    if not predict_step(8, http):
        return False
    same = stack.processes["predictor"].pid == pid and stack.processes["predictor"].poll() is None
    console.print(
        f"-> the predictor (pid {pid}) was {'never' if same else 'RESTARTED, not'} restarted"
    )
    _swap_timing(client)
    return _score_step(client, workdir, timeout)


def _swap_timing(client: redis.Redis) -> None:
    """How long after its promotion the new version answered, from the events."""
    promoted = _events(client, "model-promoted")[-1]
    loads = [e for e in _events(client, "model-loads") if e["version"] == promoted["version"]]
    swap = next((e for e in loads if e["trigger"] == "promotion" and e["loaded"]), None)
    if swap is None:
        return
    lag = datetime.fromisoformat(swap["occurred_at"]) - datetime.fromisoformat(
        promoted["occurred_at"]
    )
    prefetch = next((e for e in loads if e["trigger"] == "prefetch" and e["loaded"]), None)
    how = (
        f"it had loaded it in {prefetch['seconds']:.2f} s when model-trained arrived"
        if prefetch
        else f"loading took {swap['seconds']:.2f} s"
    )
    console.print(
        f"   v{promoted['version']} served {lag.total_seconds():.2f} s after its model-promoted "
        f"event ({how}; see `XRANGE model-loads - +`)"
    )


def _second_version(
    client: redis.Redis, http: httpx.Client, workdir: Path, old: int, timeout: float
) -> bool:
    step(7, "upload a second version through the gateway: POST /v1/datasets/churn/ingest")
    csv = workdir / "inbox" / "churn-week-2.csv"
    _generator().write(csv, _generator().generate(rows=6000, seed=2026, broken=False))
    accepted = http.post(
        "/v1/datasets/churn/ingest",
        content=csv.read_bytes(),
        headers={"Content-Type": "text/csv"},
    )
    if accepted.status_code != 202:
        return failed(f"{accepted.status_code} {accepted.text}")
    flow = accepted.json()["correlation_id"]
    console.print(f"-> 202, data-arrived published (correlation id {flow})")
    trained = wait_event(client, "model-trained", flow, timeout)
    if trained is None:
        return failed("no model-trained event for the upload")
    verdict = "passed" if trained["gate_passed"] else "failed"
    console.print(
        f"-> model-trained v{trained['model_version']}: gate {verdict}: "
        f"{'; '.join(trained['gate_reasons'])}"
    )
    new = int(trained["model_version"])
    if wait_event(client, "model-promoted", flow, 10) is None:
        console.print(
            f"   the gate kept v{old} in production; promoting v{new} by hand, through the "
            f"gateway: POST /v1/models/{MODEL}/promote"
        )
        promoted = http.post(f"/v1/models/{MODEL}/promote", json={"version": new})
        if promoted.status_code != 200:
            return failed(f"{promoted.status_code} {promoted.text}")
    wait_for(lambda: _serving(http) == new, 30, f"the predictor serving v{new}")
    console.print(f"-> [green]model-promoted[/green]: v{new} is in production and in service")
    return True


def _score_step(client: redis.Redis, workdir: Path, timeout: float) -> bool:
    step(
        9,
        "score a Parquet file through the stream: XADD score-requested (what "
        "`streamops score churn FILE` does)",
    )
    path = workdir / "inbox" / "customers.parquet"
    # The rows the ingestor accepted (so valid), without the label: customers to score.
    table = FeatureStore(workdir / "feature-store").read("churn", 1)
    pq.write_table(table.drop_columns(["churned"]), path)
    job = f"demo-{uuid.uuid4().hex[:8]}"
    publish(client, ScoreRequested(job_id=job, model_name=MODEL, input=ParquetInput(uri=str(path))))
    with Progress(
        TextColumn("   scoring"), BarColumn(), TextColumn("{task.completed}/{task.total} chunks")
    ) as bar:
        task = bar.add_task("score", total=None)

        def show(status: JobStatus) -> None:
            bar.update(task, total=status.chunks or None, completed=status.chunks_done)

        final = wait_for_job(client, job, timeout, on_progress=show)
    if final is None or final.status != "done" or final.output_uri is None:
        return failed(f"scoring job {job}: {final}")
    output = pq.read_table(final.output_uri)
    console.print(
        f"-> [green]scored[/green]: {final.rows} rows by v{final.model_version} in "
        f"{final.chunks} chunk(s), written to {final.output_uri}"
    )
    console.print(output.slice(0, 3).to_pandas().to_string(index=False))
    return True


def _predict(http: httpx.Client) -> httpx.Response | None:
    deadline = time.monotonic() + 30
    while True:  # the predictor may still be loading the version just promoted
        answer = http.post(f"/v1/models/{MODEL}/predict", json={"rows": ROWS})
        if answer.status_code == 200:
            return answer
        if time.monotonic() > deadline:
            failed(f"{answer.status_code} {answer.text}")
            return None
        time.sleep(0.2)


def _serving(http: httpx.Client) -> int | None:
    answer = _predict(http)
    return None if answer is None else int(answer.headers["X-Model-Version"])


def _generator() -> Any:
    path = BUNDLED_DATASETS / "churn" / "generate.py"
    spec = importlib.util.spec_from_file_location("churn_generate", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _events(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    entries: Any = client.xrange(stream)
    return [json.loads(fields[b"__data__"]) for _, fields in entries]


def wait_event(
    client: redis.Redis, stream: str, correlation_id: str, timeout: float
) -> dict[str, Any] | None:
    found: list[dict[str, Any]] = []

    def arrived() -> bool:
        events = _events(client, stream)
        found[:] = [e for e in events if e.get("correlation_id") == correlation_id]
        return bool(found)

    try:
        wait_for(arrived, timeout, stream)
    except TimeoutError:
        return None
    return found[-1]


def show_runtime(client: redis.Redis, model: str, version: int, timeout: float = 30) -> None:
    """Say what runs the version the replicas loaded: its verified ONNX graph, or the native
    model and why (docs/serving.md, compiled serving)."""
    found: list[dict[str, Any]] = []

    def loaded() -> bool:
        found[:] = [
            e
            for e in _events(client, "model-loads")
            if e.get("model_name") == model and e.get("version") == version and e.get("loaded")
        ]
        return bool(found)

    try:
        wait_for(loaded, timeout, "model-loads")
    except TimeoutError:
        console.print("   (no replica has announced loading it yet)")
        return
    event = found[-1]
    console.print(
        f"   served by [bold]{event.get('runtime') or 'native'}[/bold] on {event['replica']} "
        f"(compiled: {event.get('compiled') or 'no verdict'}; see `XRANGE model-loads - +`)"
    )


def step(n: int, text: str) -> None:
    console.rule(f"[bold]step {n}[/bold]")
    console.print(text)


def failed(result: object) -> bool:
    console.print(f"[red]unexpected outcome:[/red] {result}")
    return False
