"""`streamops`: run the services, run them all locally, announce data, score, manage models.

    streamops up                                Redis, MLflow and every service as local processes
    streamops ingestor                          run the ingestor service
    streamops trainer                           run the trainer service
    streamops predictor                         run a predictor replica
    streamops gateway                           run the HTTP gateway (gunicorn, uvicorn workers)
    streamops asyncapi SERVICE                  print a service's AsyncAPI document
    streamops ingest DATASET SOURCE [...]       publish data-arrived and wait for the outcome
    streamops ingest --local DATASET SOURCE     ingest in this process, with a progress bar
    streamops score MODEL INPUT.parquet         batch-score a file on the predictors
    streamops models MODEL                      versions, aliases, gate verdicts, metrics
    streamops promote MODEL VERSION             production -> VERSION, publishes model-promoted
    streamops rollback MODEL                    back to the previous production version
    streamops versions DATASET                  list the dataset's versions
    streamops quarantine DATASET [VERSION]      show the rows a version rejected
    streamops explain-request REQUEST_ID        what answered a request, and the data behind it
    streamops replay MODEL --version N --since T  logged requests scored again by version N

Configuration comes from the environment (see docs/configuration.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from shared.events import (
    CsvSource,
    DataArrived,
    DataIngested,
    DataRejected,
    NextLinkPagination,
    PageNumberPagination,
    RestSource,
    SqlSource,
)

if TYPE_CHECKING:
    from streamops.stack import Running

console = Console()
err = Console(stderr=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamops", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("ingestor", help="run the ingestor service")
    run.set_defaults(run=_run_ingestor)
    run = commands.add_parser("trainer", help="run the trainer service")
    run.set_defaults(run=_run_trainer)
    run = commands.add_parser("predictor", help="run a predictor replica")
    run.set_defaults(run=_run_predictor)
    run = commands.add_parser("gateway", help="run the HTTP gateway (gunicorn, uvicorn workers)")
    run.set_defaults(run=_run_gateway)

    _add_up(commands)

    spec = commands.add_parser("asyncapi", help="print a service's AsyncAPI document")
    spec.add_argument("service", choices=SERVICES[:3])
    spec.set_defaults(run=_asyncapi)

    ingest = commands.add_parser("ingest", help="announce new data for a dataset")
    ingest.add_argument("dataset")
    ingest.add_argument("source", help="CSV path or file:// URI, http(s) URL, or SQLAlchemy URL")
    ingest.add_argument("--query", help="SQL query (makes SOURCE a database URL)")
    ingest.add_argument("--records-field", help="REST: JSON field holding the records")
    pages = ingest.add_mutually_exclusive_group()
    pages.add_argument("--next-link", metavar="FIELD", help="REST: follow next links in FIELD")
    pages.add_argument("--page-param", metavar="NAME", help="REST: page-number parameter")
    ingest.add_argument("--local", action="store_true", help="ingest in this process")
    ingest.add_argument("--no-wait", action="store_true", help="publish and return")
    ingest.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
    ingest.set_defaults(run=_ingest)

    promote = commands.add_parser("promote", help="put a model version in production")
    promote.add_argument("model")
    promote.add_argument("version", type=int)
    promote.set_defaults(run=_promote)

    _add_shadow(commands)
    _add_canary(commands)

    back = commands.add_parser("rollback", help="back to the previous production version")
    back.add_argument("model")
    back.set_defaults(run=_rollback)

    models = commands.add_parser("models", help="a model's versions, aliases and metrics")
    models.add_argument("model", nargs="?")
    models.set_defaults(run=_models)

    versions = commands.add_parser("versions", help="list a dataset's versions")
    versions.add_argument("dataset")
    versions.set_defaults(run=_versions)

    quarantine = commands.add_parser("quarantine", help="show a version's rejected rows")
    quarantine.add_argument("dataset")
    quarantine.add_argument("version", nargs="?", type=int)
    quarantine.add_argument("--limit", type=int, default=50)
    quarantine.set_defaults(run=_quarantine)
    _add_score(commands)
    _add_feedback(commands)
    return parser


def _add_feedback(commands: Any) -> None:
    """The prediction log's commands (docs/feedback.md)."""
    explain = commands.add_parser(
        "explain-request",
        help="what answered a request, and the data that made it (the prediction log)",
    )
    explain.add_argument("request_id")
    explain.set_defaults(run=_explain_request)

    again = commands.add_parser(
        "replay", help="score a window of logged requests with another version, and compare"
    )
    again.add_argument("model")
    again.add_argument("--version", type=int, required=True, help="the version to replay with")
    again.add_argument("--since", required=True, help="ISO 8601 time, or how long ago: 30m, 2h, 1d")
    again.add_argument("--until", default=None, help="the same forms; default: now")
    again.set_defaults(run=_replay)


# --- services ----------------------------------------------------------------------------------


SERVICES = ("ingestor", "trainer", "predictor", "gateway")


def _asyncapi(args: argparse.Namespace) -> int:
    """The service's streams and event payloads (with their descriptions), as AsyncAPI 3 JSON."""
    import importlib

    app = importlib.import_module(f"{args.service}.app").build_app()
    print(app.schema.to_specification().to_json())
    return 0


def _add_up(commands: Any) -> None:
    up = commands.add_parser("up", help="run the whole stack as local processes until Ctrl-C")
    up.add_argument("--workdir", type=Path, default=Path("var/up"))
    up.add_argument(
        "--redis-cluster",
        action="store_true",
        help="a local Redis Cluster (3 masters, 3 replicas) instead of one Redis",
    )
    up.add_argument(
        "--s3",
        action="store_true",
        help="a local S3 API (moto) holding the feature store and MLflow's artifacts",
    )
    up.set_defaults(run=_up)


def _up(args: argparse.Namespace) -> int:
    """Redis (unless one is configured), MLflow and the services, until Ctrl-C or SIGTERM."""
    import shlex
    import signal
    import threading

    from rich.markup import escape

    from streamops.stack import bring_up, local_stack, write_prometheus_targets

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    workdir = args.workdir.resolve()
    with local_stack(workdir) as stack:
        running = bring_up(stack, SERVICES, redis_cluster=args.redis_cluster, object_store=args.s3)
        # For deploy/prometheus/local.yml, which reads var/up/prometheus/ (the default workdir).
        write_prometheus_targets(running, workdir / "prometheus")
        exports = escape(" ".join(f"{k}={shlex.quote(v)}" for k, v in running.env.items()))
        console.print(
            f"[bold]ready[/bold]\n  Redis:     {running.redis_url}{_cluster(running)}\n"
            f"  MLflow UI: {running.mlflow_url}\n{_object_store(running)}"
            f"  gateway:   {running.gateway_url} (API docs: {running.gateway_url}/docs)\n"
            f"  metrics:   {', '.join(f'{n} {u}' for n, u in running.metrics.items())}\n"
            f"  Prometheus: targets in {workdir / 'prometheus'} "
            "(prometheus --config.file=deploy/prometheus/local.yml)\n"
            f"  services:  {', '.join(SERVICES)} "
            f"(logs in {stack.log('x').parent})\n"
            f"  inbox:     {running.env['STREAMOPS_GATEWAY_INBOX']} (drop CSV files here)\n"
            f"  settings:\n{_used(running)}\n"
            f"  CLI:       export {exports}\n"
            "Ctrl-C stops everything.",
            soft_wrap=True,  # long lines stay whole: the export line is pasted into a shell
        )
        stop.wait()
        console.print("stopping ...")
    return 0


def _cluster(running: Running) -> str:
    nodes = running.env.get("STREAMOPS_REDIS_CLUSTER_NODES")
    return f" (a cluster: {nodes}; redis-cli -c)" if nodes else ""


def _object_store(running: Running) -> str:
    uri = running.env.get("STREAMOPS_FEATURE_STORE_URI")
    if not uri:
        return ""
    endpoint = running.env.get("AWS_ENDPOINT_URL_S3", "AWS")
    return f"  S3:        {uri} and MLflow's artifacts, on {endpoint}\n"


def _used(running: Running) -> str:
    """One line per setting `up` gave the services, with where it came from (a value exported
    before `up` wins)."""
    from rich.markup import escape

    # escape: a JSON list of roots is not rich markup
    return "\n".join(
        escape(f"    {name}={value} ({running.origin.get(name, 'chosen by up')})")
        for name, value in running.env.items()
    )


def _run_ingestor(args: argparse.Namespace) -> int:
    from ingestor.app import build_app

    return _serve(build_app())


def _run_trainer(args: argparse.Namespace) -> int:
    from trainer.app import build_app

    return _serve(build_app())


def _run_predictor(args: argparse.Namespace) -> int:
    from predictor.app import build_app

    return _serve(build_app())


def _run_gateway(args: argparse.Namespace) -> int:
    import os

    from gateway.serve import gunicorn_argv, metrics_dir
    from shared.settings import GatewaySettings

    argv = gunicorn_argv(GatewaySettings())  # bad settings fail here, before gunicorn starts
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir()
    os.execv(argv[0], argv)  # gunicorn becomes this process: signals reach it directly


def _serve(app: Any) -> int:
    """Run a service until a signal stops it; exit 1 if FastStream gave up on a subscriber."""
    import logging

    from shared.telemetry import CriticalSeen

    critical = CriticalSeen()
    logging.getLogger("streamops.broker").addHandler(critical)
    asyncio.run(app.run())
    if critical.seen:
        err.print("a subscriber stopped for good (see the log above): exiting with 1")
        return 1
    return 0


# --- ingest ------------------------------------------------------------------------------------


def source_from_args(args: argparse.Namespace) -> CsvSource | SqlSource | RestSource:
    raw: str = args.source
    if args.query:
        return SqlSource(url=raw, query=args.query)
    if raw.startswith(("http://", "https://")):
        pagination: NextLinkPagination | PageNumberPagination | None = None
        if args.next_link:
            pagination = NextLinkPagination(next_field=args.next_link)
        elif args.page_param:
            pagination = PageNumberPagination(param=args.page_param)
        return RestSource(url=raw, records_field=args.records_field, pagination=pagination)
    local = Path(raw).expanduser()
    # A path that exists here is meant as this path; the service resolves others in its roots.
    return CsvSource(uri=str(local.resolve()) if local.exists() else raw)


def _ingest(args: argparse.Namespace) -> int:
    event = DataArrived(dataset=args.dataset, source=source_from_args(args))
    if args.local:
        return _ingest_here(event)
    return _publish_and_wait(event, wait=not args.no_wait, timeout=args.timeout)


def _ingest_here(event: DataArrived) -> int:
    from ingestor.service import ingest
    from shared.feature_store import FeatureStore
    from shared.settings import IngestorSettings

    settings = IngestorSettings()
    store = FeatureStore(settings.common.feature_store_location)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"ingesting {event.dataset}", total=None)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        result = ingest(event, settings, store, progress)
    return _report(result)


def _publish_and_wait(event: DataArrived, wait: bool, timeout: float) -> int:
    from shared.broker import sync_redis_client
    from shared.settings import CommonSettings
    from streamops.client import progress, publish, stream_ends, wait_for_outcome

    client = sync_redis_client(CommonSettings())
    # Outcomes from this moment on only: anything older answers somebody else.
    after = stream_ends(client, (DataIngested.stream, DataRejected.stream))
    entry_id = publish(client, event)
    console.print(f"published data-arrived {entry_id} (event {event.event_id})")
    if not wait:
        return 0
    with _bar() as bar:
        task = bar.add_task(f"waiting for the ingestor ({event.dataset})", total=None)

        def show_progress() -> None:
            done = progress(client, event.correlation_id)
            if done is not None:
                bar.update(
                    task, description=f"ingesting {event.dataset}", completed=done[0], total=done[1]
                )

        result = wait_for_outcome(client, event.correlation_id, after, timeout, show_progress)
    if result is None:
        err.print(f"no answer within {timeout:.0f}s: is an ingestor running (streamops ingestor)?")
        return 3
    return _report(result)


def _bar() -> Progress:
    """Bytes for files, rows for the rest: the bar shows whatever the ingestor counts."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=err, transient=True)


def _report(result: DataIngested | DataRejected) -> int:
    if isinstance(result, DataRejected):
        err.print(f"[red]rejected[/red] {result.dataset}: {result.reason} ({result.kind})")
        for detail in result.details:
            err.print(f"  - {detail}")
        return 2
    status = "new version" if result.new_version else "already stored (same content)"
    console.print(
        f"[green]{result.dataset} v{result.version}[/green]: {status}; {result.rows} rows, "
        f"{result.quarantined_rows} quarantined\n  data: {result.path}"
    )
    if result.quarantine_path:
        console.print(f"  quarantine: {result.quarantine_path}")
    return 0


# --- models ------------------------------------------------------------------------------------


def _registry() -> Any:
    import mlflow

    from shared.registry import MlflowRegistry
    from shared.settings import CommonSettings

    uri = CommonSettings().mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    return MlflowRegistry(uri)


def _announce(event: Any) -> None:
    """Publish a promotion for serving, and say what happened."""
    _publish(event)
    before = f"v{event.previous_version}" if event.previous_version else "nothing"
    console.print(
        f"{event.model_name}: production is v{event.version} (was {before}); "
        f"model-promoted published ({event.reason})"
    )


def _promote(args: argparse.Namespace) -> int:
    from shared.promotion import promote

    registry = _registry()
    if args.version not in [v.version for v in registry.versions(args.model)]:
        err.print(f"model {args.model!r} has no version {args.version}")
        return 1
    _announce(promote(registry, args.model, args.version, "manual"))
    return 0


def _add_shadow(commands: Any) -> None:
    _add_aside(
        commands,
        "shadow",
        summary="let a version shadow production: it predicts a sample of the online "
        "requests too, after they are answered, and never answers a client",
        share=("--sample", 0.1, "share of the requests (default 0.1)"),
        off="no challenger any more",
        run=_shadow,
    )


def _add_canary(commands: Any) -> None:
    _add_aside(
        commands,
        "canary",
        summary="route a percent of the online requests to a version (a client's "
        "X-Routing-Key keeps it on one version)",
        share=("--percent", 10.0, "percent of the requests (default 10)"),
        off="no canary any more",
        run=_canary,
    )


def _add_aside(
    commands: Any,
    name: str,
    *,
    summary: str,
    share: tuple[str, float, str],
    off: str,
    run: Callable[[argparse.Namespace], int],
) -> None:
    """`streamops shadow` and `streamops canary`: a model, a version and its share, or --off."""
    parser = commands.add_parser(name, help=summary)
    parser.add_argument("model")
    parser.add_argument("version", type=int, nargs="?")
    flag, default, said = share
    parser.add_argument(flag, type=float, default=default, help=said)
    parser.add_argument("--off", action="store_true", help=off)
    parser.set_defaults(run=run)


def _shadow(args: argparse.Namespace) -> int:
    from shared.promotion import shadow

    registry = _registry()
    if args.off:
        registry.end_shadow(args.model)
        console.print(f"{args.model}: no challenger; the replicas drop it at their next converge")
        return 0
    return _aside(
        args,
        registry,
        lambda: shadow(registry, args.model, args.version, args.sample),
        f"{args.model}: v{args.version} shadows {args.sample:.0%} of the online requests; "
        "model-promoted published (alias challenger)",
    )


def _canary(args: argparse.Namespace) -> int:
    from shared.promotion import canary, end_canary

    registry = _registry()
    if args.off:
        ended = end_canary(registry, args.model)
        if ended is not None:
            _publish(ended)
        console.print(f"{args.model}: no canary; production answers every request")
        return 0
    return _aside(
        args,
        registry,
        lambda: canary(registry, args.model, args.version, args.percent),
        f"{args.model}: v{args.version} answers {args.percent:g}% of the online requests once "
        "every replica holds it; model-promoted published (alias canary)",
    )


def _aside(args: argparse.Namespace, registry: Any, move: Callable[[], Any], said: str) -> int:
    """Set a challenger or a canary: the version must exist, and the move be valid (1
    otherwise, and why); then it is announced."""
    from shared.errors import InvalidCanary, InvalidShadow

    if args.version not in [v.version for v in registry.versions(args.model)]:
        err.print(f"model {args.model!r} has no version {args.version}")
        return 1
    try:
        event = move()
    except (InvalidShadow, InvalidCanary) as exc:
        err.print(str(exc))
        return 1
    _publish(event)
    console.print(said)
    return 0


def _publish(event: Any) -> None:
    from shared.broker import sync_redis_client
    from shared.settings import CommonSettings
    from streamops.client import publish

    publish(sync_redis_client(CommonSettings()), event)


def _rollback(args: argparse.Namespace) -> int:
    from shared.errors import NothingToRollBack
    from shared.promotion import rollback

    try:
        _announce(rollback(_registry(), args.model))
    except NothingToRollBack as exc:
        err.print(str(exc))
        return 1
    return 0


def _models(args: argparse.Namespace) -> int:
    registry = _registry()
    names = [args.model] if args.model else registry.model_names()
    for name in names:
        aliases = registry.aliases(name)
        by_version: dict[int, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(version, []).append(alias)
        table = Table("version", "aliases", "dataset v", "gate", "metrics", "guard", title=name)
        for v in registry.versions(name):
            metrics = ", ".join(
                f"{k} {val:.4f}" for k, val in sorted(v.metrics.items()) if k != "training_seconds"
            )
            table.add_row(
                str(v.version),
                " ".join(sorted(by_version.get(v.version, []))),
                v.tags.get("streamops.dataset_version", ""),
                {"true": "passed", "false": "failed"}.get(
                    v.tags.get("streamops.gate_passed", ""), ""
                ),
                metrics,
                # The rollout guard's verdict, with its figures when it undid the version.
                v.tags.get("streamops.guard", ""),
            )
        console.print(table)
    return 0


# --- batch scoring -----------------------------------------------------------------------------


def _add_score(commands: Any) -> None:
    score = commands.add_parser("score", help="score a Parquet file with a model's production")
    score.add_argument("model", help="registered model name (its production version scores)")
    score.add_argument("input", help="Parquet file inside the predictors' score roots")
    score.add_argument("--job-id", help="job id (default: a new one)")
    score.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait")
    score.set_defaults(run=_score)


def _score(args: argparse.Namespace) -> int:
    """Submit a scoring job, show its chunks as a progress bar, then a summary (1: refused)."""
    import uuid

    from rich.progress import MofNCompleteColumn

    from shared.broker import sync_redis_client
    from shared.events import ParquetInput, ScoreRequested
    from shared.jobs import JobStatus
    from shared.settings import CommonSettings
    from streamops.client import publish, wait_for_job

    local = Path(args.input).expanduser()
    uri = str(local.resolve()) if local.exists() else args.input
    job_id = args.job_id or f"score-{uuid.uuid4().hex[:12]}"
    event = ScoreRequested(job_id=job_id, model_name=args.model, input=ParquetInput(uri=uri))
    client = sync_redis_client(CommonSettings())
    publish(client, event)
    console.print(f"job {job_id}: score-requested published")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("chunks"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"waiting for a predictor ({args.model})", total=None)

        def show(status: JobStatus) -> None:
            what = f"scoring {status.rows:,} rows with {status.model_name} v{status.model_version}"
            bar.update(task, description=what, completed=status.chunks_done, total=status.chunks)

        result = wait_for_job(client, job_id, args.timeout, show)
    if result is None:
        err.print(f"no answer within {args.timeout:.0f}s: is a predictor running?")
        return 3
    if result.status == "rejected":
        err.print(f"[red]rejected[/red] {job_id}: {result.error}")
        return 1
    console.print(
        f"[green]{job_id}[/green]: {result.rows:,} rows scored by {result.model_name} "
        f"v{result.model_version}\n  output: {result.output_uri}"
    )
    return 0


# --- feature store -----------------------------------------------------------------------------


def _versions(args: argparse.Namespace) -> int:
    from shared.feature_store import FeatureStore
    from shared.settings import CommonSettings

    found = FeatureStore(CommonSettings().feature_store_location).versions(args.dataset)
    if not found:
        err.print(f"dataset {args.dataset!r} has no version")
        return 1
    table = Table("version", "rows", "quarantined", "created", "source", "hash")
    for v in found:
        table.add_row(
            str(v.version),
            str(v.rows),
            str(v.quarantined_rows),
            v.created_at.isoformat(timespec="seconds"),
            v.source,
            v.content_hash[:12],
        )
    console.print(table)
    return 0


def _quarantine(args: argparse.Namespace) -> int:
    from shared.errors import VersionNotFound
    from shared.feature_store import FeatureStore
    from shared.settings import CommonSettings

    store = FeatureStore(CommonSettings().feature_store_location)
    try:
        version = args.version or store.latest(args.dataset).version
        lines = store.quarantine(args.dataset, version).slice(0, args.limit).to_pylist()
    except VersionNotFound as exc:
        err.print(str(exc))
        return 1
    table = Table("row", "column", "value", "reason", title=f"{args.dataset} v{version}")
    for line in lines:
        table.add_row(str(line["row"]), line["column"] or "", line["value"] or "", line["reason"])
    console.print(table)
    return 0


def _explain_request(args: argparse.Namespace) -> int:
    """request → version → run → dataset version → source, from the prediction log and the
    feature store (docs/feedback.md)."""
    from shared import predlog
    from shared.errors import VersionNotFound
    from shared.feature_store import FeatureStore
    from shared.settings import CommonSettings

    root = CommonSettings().feature_store_root
    records = predlog.find_request(root, args.request_id).to_pylist()
    if not records:
        err.print(
            f"request {args.request_id!r} is not in the prediction log under {root} (is it "
            "logged, sampled in, and compacted yet? docs/feedback.md)"
        )
        return 1
    store = FeatureStore(CommonSettings().feature_store_location)
    for first in _by_version(records):
        rows = [
            r for r in records if (r["model"], r["version"]) == (first["model"], first["version"])
        ]
        # A challenger's records are what it said of the rows after production answered
        # them: never sent to the client (docs/rollout.md).
        said = "shadowed (not sent)" if first["source"] == "shadow" else "answered"
        console.print(
            f"request {args.request_id}: {len(rows)} row(s), {first['source']}, {said} "
            f"{first['time'].isoformat(timespec='milliseconds')} by replica {first['replica']}"
        )
        for row in rows[:20]:
            console.print(f"  row {row['row']}: {row['prediction']!r} {row['probabilities'] or ''}")
        console.print(f"  → model {first['model']} v{first['version']}")
        console.print(f"  → MLflow run {first['run_id'] or '(unknown: registered elsewhere)'}")
        if not first["dataset"] or first["dataset_version"] is None:
            console.print("  → dataset: not recorded (a version registered outside streamops)")
            continue
        line = f"  → dataset {first['dataset']} v{first['dataset_version']}"
        try:
            info = store.get(first["dataset"], first["dataset_version"])
        except VersionNotFound:
            console.print(f"{line} (content hash {first['content_hash']}; no longer stored)")
            continue
        console.print(f"{line}: {info.rows} rows, content hash {info.content_hash[:16]}")
        console.print(f"  → source {info.source} (ingested {info.created_at.isoformat()})")
    return 0


def when(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC when it has no zone), or how long ago (`30m`, `2h`, `1d`)."""
    now = now or datetime.now(UTC)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _replay(args: argparse.Namespace) -> int:
    from shared.settings import CommonSettings
    from streamops.replay import replay, report

    common = CommonSettings()
    try:
        since = when(args.since)
        until = when(args.until) if args.until else None
    except ValueError as exc:
        err.print(f"not a time: {exc}")
        return 2
    try:
        predict = _version_predictor(common, args.model, args.version)
    except Exception as exc:
        err.print(f"cannot load {args.model} v{args.version}: {exc}")
        return 1
    found = replay(common.feature_store_root, args.model, predict, since=since, until=until)
    if found.rows == 0:
        err.print(f"no logged rows of {args.model} with their features in that window")
        return 1
    for line in report(found, args.model, args.version):
        console.print(line)
    return 0


def _version_predictor(common: Any, model_name: str, version: int) -> Any:
    """The version's native model, fed as the trainer fed it (its spec's features), or with
    the logged columns as they are for a model registered elsewhere."""
    from shared.datasets import feature_frame, load_spec
    from shared.registry import MlflowRegistry

    model = MlflowRegistry(common.mlflow_tracking_uri).load(model_name, version)
    specs = []
    for path in sorted(common.datasets_dir.glob("*/spec.yaml")):
        try:
            spec = load_spec(common.datasets_dir, path.parent.name)
        except Exception:
            continue
        if spec.training is not None and spec.model_name == model_name:
            specs.append(spec)

    def predict(frame: Any) -> Any:
        rows = feature_frame(specs[0], frame) if specs else frame
        if hasattr(model, "predict_proba") and hasattr(model, "classes_"):
            proba = model.predict_proba(rows)
            classes = list(model.classes_)
            return [classes[i] for i in proba.argmax(axis=1)], proba.tolist(), classes
        return list(model.predict(rows)), None, None

    return predict


def _by_version(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first record of each (model, version) among `records`: a reused client request id
    may have been answered by several."""
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for record in records:
        seen.setdefault((record["model"], record["version"]), record)
    return list(seen.values())


if __name__ == "__main__":
    sys.exit(main())
