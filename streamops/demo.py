"""`make demo`: the main job, end to end, as far as it exists.

Starts a local Redis (unless STREAMOPS_REDIS_URL or REDIS_URL names one) and the ingestor as a
process of its own, then, as an outside producer with a plain Redis client would:

1. announces the bundled churn sample (5,000 rows, 8 broken on purpose) on `data-arrived`;
2. announces it again: the same content makes no second version;
3. announces a CSV with a column missing: the batch is rejected, no version;
4. sends a message that is not an event: it lands on the dead-letter stream;

printing what happened after each step and where to look, then stops what it started.
Everything it writes is under var/demo/ (wiped at the start, kept at the end).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from shared.events import DataArrived, DataIngested, DataRejected, dead_letter_stream
from shared.settings import BUNDLED_DATASETS, REPO_ROOT
from streamops.client import ingest_and_wait
from streamops.stack import Stack, local_stack, wait_for

console = Console()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="streamops demo")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "var" / "demo")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    workdir: Path = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "inbox").mkdir(parents=True)
    with local_stack(workdir) as stack:
        url = os.environ.get("STREAMOPS_REDIS_URL") or os.environ.get("REDIS_URL")
        if url is None:
            url = stack.start_redis()
            console.print(f"[bold]Redis[/bold] started at {url} (data in {workdir / 'redis'})")
        env = {
            "STREAMOPS_REDIS_URL": url,
            "STREAMOPS_FEATURE_STORE_ROOT": str(workdir / "feature-store"),
            "STREAMOPS_INGESTOR_DATA_ROOTS": f"{BUNDLED_DATASETS},{workdir / 'inbox'}",
        }
        stack.start_service("ingestor", "ingestor", env)
        client = redis.Redis.from_url(url)
        wait_for(
            lambda: client.keys("streamops:heartbeat:ingestor:*"),
            60,
            f"the ingestor (see {stack.log('ingestor')})",
        )
        console.print(f"[bold]ingestor[/bold] running (log: {stack.log('ingestor')})\n")
        ok = _story(client, workdir, args.timeout)
        _where_to_look(url, workdir, stack)
    return 0 if ok else 1


def _story(client: redis.Redis, workdir: Path, timeout: float) -> bool:
    store = workdir / "feature-store"
    _step(
        1,
        "announce the churn sample: XADD data-arrived * __data__ "
        '\'{"dataset":"churn","source":"churn/churn.csv"}\'',
    )
    first = ingest_and_wait(client, DataArrived(dataset="churn", source="churn/churn.csv"), timeout)
    if not isinstance(first, DataIngested):
        return _failed(first)
    console.print(
        f"-> [green]data-ingested[/green]: churn v{first.version}, {first.rows} rows "
        f"accepted, {first.quarantined_rows} quarantined"
    )
    _show_quarantine(first)
    console.print("the event, as `XRANGE data-ingested - +` shows it:")
    console.print_json(first.model_dump_json())

    _step(2, "announce the same file again")
    again = ingest_and_wait(client, DataArrived(dataset="churn", source="churn/churn.csv"), timeout)
    if not isinstance(again, DataIngested):
        return _failed(again)
    versions = sorted(p.name for p in (store / "churn" / "versions").iterdir())
    console.print(
        f"-> data-ingested with new_version={again.new_version}: still v{again.version}"
        f" (versions on disk: {', '.join(versions)})"
    )

    _step(3, "announce a CSV whose 'plan' column is missing")
    broken = workdir / "inbox" / "churn-no-plan.csv"
    _drop_column(BUNDLED_DATASETS / "churn" / "churn.csv", broken, "plan")
    rejected = ingest_and_wait(client, DataArrived(dataset="churn", source=str(broken)), timeout)
    if not isinstance(rejected, DataRejected):
        return _failed(rejected)
    console.print(
        f"-> [yellow]data-rejected[/yellow] ({rejected.kind}): {rejected.reason}: "
        f"{'; '.join(rejected.details)}"
    )

    _step(4, "send something that is not an event: XADD data-arrived * __data__ 'hello'")
    before = client.xlen(dead_letter_stream("data-arrived"))
    client.xadd("data-arrived", {"__data__": b"hello"})
    wait_for(
        lambda: client.xlen(dead_letter_stream("data-arrived")) > before, timeout, "the dead letter"
    )
    newest: Any = client.xrevrange(dead_letter_stream("data-arrived"), count=1)
    _, fields = newest[0]
    letter = json.loads(fields[b"__data__"])
    console.print(
        f"-> [red]data-arrived.dlq[/red]: {letter['reason']} (payload kept: {letter['payload']})"
    )
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


def _step(n: int, text: str) -> None:
    console.rule(f"[bold]step {n}[/bold]")
    console.print(text)


def _failed(result: object) -> bool:
    console.print(f"[red]unexpected outcome:[/red] {result}")
    return False


def _where_to_look(url: str, workdir: Path, stack: Stack) -> None:
    port = url.rsplit(":", 1)[1].split("/", maxsplit=1)[0]
    console.rule("[bold]where to look[/bold]")
    console.print(
        f"feature store:   {workdir / 'feature-store' / 'churn'} (manifest.json, versions/)\n"
        f"service log:     {stack.log('ingestor')}\n"
        f"events:          redis-cli -p {port} XRANGE data-ingested - +\n"
        f"                 (Redis keeps running only while the demo does; its AOF stays in "
        f"{workdir / 'redis'})\n"
        f"versions:        STREAMOPS_FEATURE_STORE_ROOT={workdir / 'feature-store'} "
        f".venv/bin/streamops versions churn"
    )


if __name__ == "__main__":
    sys.exit(main())
