"""Online predict throughput and latency against `mlflow models serve` and BentoML, in one run.

    python bench/serve.py [--workers 2] [--duration 10] [--warmup 5] [--concurrency 1,8,32]
                          [--repeat 1] [--quiet-cores 0.3] [--quiet-wait 120] [--workdir DIR]
                          [--runtime auto|native] [--no-mlflow] [--no-bentoml] [--peers-only]
                          [--log-cost | --shadow-cost SAMPLE]

Starts, as local processes in a temporary directory: Redis, an MLflow tracking server, then

- `mlflow models serve -m models:/NAME@production --env-manager local -w WORKERS`
  (uvicorn workers, each with the model loaded; no batching);
- BentoML: bench/bentoml_service.py under `bentoml serve`, WORKERS worker processes, an API
  with adaptive batching (`batchable=True`), the pipeline loaded from the same registry with
  mlflow.sklearn; in a venv of its own that bench/bentoml_peer.py creates on first use;
- streamops: `streamops predictor` replicas and `streamops gateway` (FastAPI under gunicorn,
  coalescing concurrent predict requests into batches sent to the predictors over Redis).

All serve the same registered model version: a scikit-learn pipeline (median imputation,
scaling, RandomForestClassifier with 100 trees of depth 10, n_jobs=1) fitted on 20 numeric
features and registered with alias `production`, as the trainer would (with its verified ONNX
graph, which only streamops uses). Each gets the same number of worker processes in total
(`--workers`, default 2: mlflow `-w 2` and BentoML `workers=2` against 1 gateway worker + 1
predictor replica); Redis is infrastructure, like the OS, and is not counted in the workers
(its CPU is counted in streamops' CPU per request).

Load: one row per request, keep-alive connections, closed loop (each connection sends its next
request when the answer arrives) at each concurrency, one system at a time, each warmed up
first; before each point the run waits (up to --quiet-wait s) for the machine to be idle. The
generator is `wrk` (-t1) when it is on PATH, otherwise a lean asyncio HTTP/1.1 client in this
process; the output says which. Prints, per concurrency and system: req/s, p50, p99, the CPU
milliseconds the system spent per request (this depends far less on other load than the rates
do) and the CPU each process group used, with what the rest of the machine used meanwhile (on
a busy machine the rates say little); then the ratios against each peer and the targets of
docs/benchmarks.md: at concurrency 32, at least 2x BentoML's throughput with at most half its
p99, and at least 50x mlflow's throughput; at concurrency 1, a p50 of at most 3 ms and at most
half BentoML's; the gateway's CPU at most 0.3 ms per request. `--log-cost` adds streamops with
the prediction log off (on a Redis database of its own), runs the logger (an ingestor) for the
one that logs, and checks that logging keeps at least 0.95x the throughput (issue 13).
`--shadow-cost SAMPLE` registers a second version as the challenger, shadowing that share of
the requests, and adds streamops with shadowing off (STREAMOPS_PREDICTOR_SHADOW=false, on a
Redis database of its own): what shadowing costs a client (issue 14).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml_peer
import common
import profiling

from streamops.stack import Stack, free_port, http_ok, wait_for

DATASET = "servebench"
FEATURES = [f"f{i:02d}" for i in range(20)]
TRAIN_ROWS = 20_000
DISTINCT_BODIES = 64
ESTIMATOR = {"n_estimators": 100, "max_depth": 10, "n_jobs": 1, "random_state": 0}
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOT_THE_SYSTEM = ("load generator", "other processes")


@dataclass(frozen=True)
class Target:
    url: str
    bodies: list[bytes]
    groups: dict[str, list[int]]  # label -> leader pids whose process trees do the work
    batches: Callable[[], int] | None = None  # streamops: predict batches sent so far


@dataclass(frozen=True)
class Point:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu: dict[str, float]  # label -> CPU seconds per wall second (1.0 = one core)
    batches: int | None = None  # predict batches the requests were coalesced into

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


# --- the model ----------------------------------------------------------------------------------


def write_spec(datasets: Path) -> Path:
    training = common.forest(ESTIMATOR, "roc_auc", promotion="manual")
    return common.write_spec(datasets, DATASET, FEATURES, training=training)


def rows(count: int, seed: int) -> Any:
    """A DataFrame of `count` rows: 20 standard normal features and a label that depends on a
    few of them, with noise."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (count, len(FEATURES))).round(6)
    logit = x[:, 0] + 0.8 * x[:, 1] - 0.6 * x[:, 2] * x[:, 3] + 0.5 * rng.normal(0, 1, count)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["label"] = (logit > 0).astype("int64")
    return frame


def register(datasets: Path, tracking_uri: str, seed: int = 1, alias: str = "production") -> int:
    """Fit the pipeline the trainer would build for the spec and register it as production
    (or another alias: a challenger fitted on other rows, for --shadow-cost)."""
    import mlflow

    from shared.compiling import VERDICT_TAG, compile_verified
    from shared.datasets import load_spec, spec_schema
    from shared.drift import reference_from
    from shared.registry import MlflowRegistry, TrainingRecord
    from trainer import estimators
    from trainer.training import evaluate, pipeline

    spec = load_spec(datasets, DATASET)
    assert spec.training is not None
    frame = rows(TRAIN_ROWS, seed=seed)
    train, test = frame.iloc[: TRAIN_ROWS * 4 // 5], frame.iloc[TRAIN_ROWS * 4 // 5 :]
    model = pipeline(spec)
    model.fit(train[FEATURES], train["label"])
    assert list(model.feature_names_in_) == FEATURES
    metrics = evaluate(model, "classification", test[FEATURES], test["label"])
    mlflow.set_tracking_uri(tracking_uri)
    registry = MlflowRegistry(tracking_uri)
    trusted = estimators.resolve(spec.training.estimator, spec.training.task).trusted_types
    # As the trainer does: compiled and verified on the hold-out rows, logged with a verdict.
    classes = tuple(model.classes_)
    onnx, verdict = compile_verified(model, spec_schema(spec), test[FEATURES], classes)
    record = TrainingRecord(
        experiment=DATASET,
        model_name=spec.model_name,
        model=model,
        params=dict(ESTIMATOR),
        metrics=metrics,
        tags={"streamops.bench": "serve", VERDICT_TAG: verdict.text},
        input_frame=train,
        input_name=f"{DATASET}@bench",
        input_source="bench/serve.py",
        input_digest="0" * 36,
        target="label",
        example=test[FEATURES].head(5),
        trusted_types=trusted,
        # As the trainer logs it: the replica then counts every online row for drift.
        drift_reference=reference_from(spec, train[FEATURES]).model_dump(mode="json"),
        onnx=onnx,
    )
    version = registry.log(record).version
    registry.set_alias(spec.model_name, alias, version)
    print(
        f"registered {spec.model_name} v{version}: roc_auc {metrics['roc_auc']:.3f}; "
        f"ONNX: {verdict.text}",
        flush=True,
    )
    return version


# --- the two systems ----------------------------------------------------------------------------


def post(url: str, body: bytes) -> Any:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def sample_rows() -> list[dict[str, float]]:
    frame = rows(DISTINCT_BODIES, seed=99)
    records: list[dict[str, float]] = frame[FEATURES].to_dict(orient="records")
    return records


def start_mlflow_serve(stack: Stack, tracking_uri: str, workers: int, env: dict[str, str]) -> str:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{DATASET}@production",
        "--env-manager",
        "local",
        "-w",
        str(workers),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    stack.spawn("mlflow-serve", argv, env={**env, "MLFLOW_TRACKING_URI": tracking_uri})
    url = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: http_ok(f"{url}/ping"), 180, f"mlflow models serve ({stack.log('mlflow-serve')})"
    )
    return url


def start_streamops(
    stack: Stack, env: dict[str, str], gateway_workers: int, predictors: int, prefix: str = ""
) -> str:
    import redis

    for i in range(predictors):
        stack.start_service(f"{prefix}predictor-{i}", "predictor", env)
    client = redis.Redis.from_url(env["STREAMOPS_REDIS_URL"])

    def replicas_beating() -> bool:
        return len(client.keys("streamops:heartbeat:predictor:*")) >= predictors

    wait_for(
        replicas_beating,
        180,
        f"{predictors} predictor replica(s) ({stack.log(f'{prefix}predictor-0')})",
    )
    client.close()
    port = free_port()
    gateway_env = {
        **env,
        "STREAMOPS_GATEWAY_HOST": "127.0.0.1",
        "STREAMOPS_GATEWAY_PORT": str(port),
        "STREAMOPS_GATEWAY_WORKERS": str(gateway_workers),
    }
    stack.start_service(f"{prefix}gateway", "gateway", gateway_env)
    url = f"http://127.0.0.1:{port}"
    log = stack.log(f"{prefix}gateway")
    wait_for(lambda: http_ok(f"{url}/readyz"), 180, f"the gateway ({log})")
    return url


def check_agreement(
    peers: dict[str, Target], ours_url: str, records: list[dict[str, float]]
) -> None:
    """Every system answers every sample row, with the same predictions: the same model."""
    answer = post(f"{ours_url}/v1/models/{DATASET}/predict", json.dumps({"rows": records}).encode())
    for name, target in peers.items():
        theirs = post(target.url, batch_body(name, records))
        labels = theirs["predictions"] if isinstance(theirs, dict) else theirs
        if list(labels) != list(answer["predictions"]):
            raise SystemExit(f"{name} and streamops disagree: {labels} vs {answer['predictions']}")
    print(
        f"{', '.join(peers)} and streamops serve {DATASET}: predictions agree on "
        f"{len(records)} rows (streamops answered with v{answer['model_version']})",
        flush=True,
    )


def batch_body(peer: str, records: list[dict[str, float]]) -> bytes:
    """The request body of a peer for these rows: each peer's own input format."""
    if peer == "bentoml":
        return json.dumps({"rows": [[r[f] for f in FEATURES] for r in records]}).encode()
    if peer == "mlflow":
        return json.dumps({"dataframe_records": records}).encode()
    return json.dumps({"rows": records}).encode()


# --- CPU accounting -----------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, utime + stime in clock ticks) of every live process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # after the name: state ppid ... utime(12th) stime(13th), counted from state = 1
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def cpu_ticks(groups: dict[str, list[int]]) -> dict[str, int]:
    """CPU ticks used so far by each labelled set of process trees."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, int] = {}
    for label, leaders in groups.items():
        total, todo = 0, list(leaders)
        while todo:
            pid = todo.pop()
            total += table.get(pid, (0, 0))[1]
            todo.extend(children.get(pid, []))
        out[label] = total
    return out


def _generator_cpu() -> float:
    """CPU seconds of this process and its waited-for children (wrk): the load generator."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _machine_busy() -> int:
    """Busy clock ticks of the whole machine, all cores (steal included: time taken away)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq + steal


# --- load generators ----------------------------------------------------------------------------

LUA = """-- written by bench/serve.py
local bodies = {
%s
}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


class Wrk:
    name = "wrk"

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        version = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
        first = (version.stdout + version.stderr).strip().splitlines()
        self.name = first[0].split(" [")[0] if first else "wrk"

    def run(self, url: str, bodies: list[bytes], concurrency: int, seconds: float) -> Point:
        script = self.workdir / f"bodies-{url.rsplit(':', 1)[-1].replace('/', '-')}.lua"
        if not script.exists():
            lines = ",\n".join(f"  [==[{b.decode()}]==]" for b in bodies)
            script.write_text(LUA % lines)
        argv = [
            self.binary,
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "--latency",
            "-s",
            str(script),
            url,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        line = next(x for x in done.stdout.splitlines() if x.startswith("WRK_RESULT "))
        raw = json.loads(line.removeprefix("WRK_RESULT "))
        return Point(
            raw["requests"],
            raw["duration_us"] / 1e6,
            raw["p50_us"] / 1000,
            raw["p99_us"] / 1000,
            raw["errors"],
            {},
        )


class AsyncioLoad:
    """Keep-alive HTTP/1.1 connections on raw asyncio streams, requests built beforehand."""

    name = "asyncio HTTP/1.1 client (wrk not on PATH)"

    def run(self, url: str, bodies: list[bytes], concurrency: int, seconds: float) -> Point:
        return asyncio.run(self._run(url, bodies, concurrency, seconds))

    async def _run(self, url: str, bodies: list[bytes], concurrency: int, seconds: float) -> Point:
        rest = url.removeprefix("http://")
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.partition(":")
        requests = [
            (
                f"POST /{path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
            for body in bodies
        ]
        latencies: list[float] = []
        errors = [0]
        started = time.perf_counter()
        stop_at = started + seconds

        async def connection(offset: int) -> None:
            reader, writer = await asyncio.open_connection(host, int(port))
            i = offset
            try:
                while True:
                    sent = time.perf_counter()
                    if sent >= stop_at:
                        return
                    writer.write(requests[i % len(requests)])
                    i += 1
                    status = await _read_response(reader)
                    latencies.append(time.perf_counter() - sent)
                    if not 200 <= status < 400:
                        errors[0] += 1
            finally:
                writer.close()

        await asyncio.gather(*(connection(i * 7) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        latencies.sort()

        def pct(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

        return Point(len(latencies), elapsed, pct(0.50), pct(0.99), errors[0], {})


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


Generator = Wrk | AsyncioLoad


def measure(load: Generator, target: Target, concurrency: int, seconds: float) -> Point:
    """One point, with the CPU each process group (and the generator) used while it ran."""
    batches = target.batches() if target.batches else None
    before, gen_before, busy_before = cpu_ticks(target.groups), _generator_cpu(), _machine_busy()
    wall = time.perf_counter()
    point = load.run(target.url, target.bodies, concurrency, seconds)
    wall = time.perf_counter() - wall
    if target.batches is not None and batches is not None:
        batches = target.batches() - batches
    after, gen_after, busy_after = cpu_ticks(target.groups), _generator_cpu(), _machine_busy()
    cpu = {label: (after[label] - before[label]) / CLK_TCK / wall for label in target.groups}
    cpu["load generator"] = (gen_after - gen_before) / wall
    # Whatever else ran on the machine meanwhile: a benchmark on a busy machine says little.
    cpu["other processes"] = max(
        0.0, (busy_after - busy_before) / CLK_TCK / wall - sum(cpu.values())
    )
    return Point(
        point.requests, point.seconds, point.p50_ms, point.p99_ms, point.errors, cpu, batches
    )


def batches_sent(redis_url: str) -> Callable[[], int]:
    """Entries ever added to the predict stream: the batches the gateway sent (the requests
    wrk counts include the warm-up's, so only differences mean anything)."""
    import redis

    from shared.events import PredictionRequested

    client = redis.Redis.from_url(redis_url)

    def count() -> int:
        info: Any = client.xinfo_stream(PredictionRequested.stream)
        return int(info["entries-added"])

    return count


def wait_for_quiet(threshold: float, timeout: float) -> float:
    """Wait (up to `timeout` s) until the machine's busy CPU over one second is at most
    `threshold` cores (the systems under test are idle now): other work on a 2-core machine
    distorts every figure. Returns the last reading."""
    deadline = time.monotonic() + timeout
    while True:
        before = _machine_busy()
        time.sleep(1.0)
        busy = (_machine_busy() - before) / CLK_TCK
        if busy <= threshold or time.monotonic() > deadline:
            return busy


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def combine(points: list[Point]) -> Point:
    """Per-figure medians over the repetitions."""
    rate = _median([p.rate for p in points])
    cpu = {k: _median([p.cpu[k] for p in points]) for k in points[0].cpu}
    counted = [p.requests / p.batches for p in points if p.batches]
    per_batch = _median(counted) if counted else None
    return Point(
        round(rate * 1000),
        1000.0,
        _median([p.p50_ms for p in points]),
        _median([p.p99_ms for p in points]),
        sum(p.errors for p in points),
        cpu,
        None if per_batch is None else round(rate * 1000 / per_batch),
    )


# --- the run ------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


PEERS = {
    "mlflow": "mlflow models serve",
    "bentoml": "BentoML",
    "streamops-nolog": "streamops, log off",
    "streamops-noshadow": "streamops, no shadow",
    "streamops": "streamops",
}


def report(
    results: dict[int, dict[str, Point]], args: argparse.Namespace, generator: str, split: str
) -> None:
    print()
    print(
        f"model: {DATASET}, RandomForestClassifier (100 trees, depth 10) on 20 numeric "
        "features, one row per request; the same registered version on every system"
    )
    print(
        f"workers: {split}; Redis is infrastructure (not counted); "
        f"streamops runtime: {args.runtime}"
    )
    runs = f"median of {args.repeat} runs" if args.repeat > 1 else "1 run"
    print(
        f"load: {generator}, keep-alive, closed loop; {args.duration:g} s per point after a "
        f"{args.warmup:g} s warm-up; {runs}; "
        f"{os.cpu_count()} cores"
    )
    print(
        "CPU ms/req: CPU time of the system's process trees (mlflow: uvicorn; BentoML: its "
        "arbiter and workers; streamops: gateway, predictors and Redis) per answered request"
    )
    rows_fmt = "{:<26}{:>9}{:>9}{:>9}{:>12}   {}"
    for concurrency, points in results.items():
        ours = points["streamops"]
        print()
        print(f"concurrency {concurrency}")
        print(rows_fmt.format("", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "CPU (cores)"))
        for name, point in points.items():
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in point.cpu.items())
            errors = f"; {point.errors} ERRORS" if point.errors else ""
            print(
                rows_fmt.format(
                    PEERS[name],
                    f"{point.rate:,.0f}",
                    f"{point.p50_ms:.1f}",
                    f"{point.p99_ms:.1f}",
                    f"{cpu_per_request(point):.2f}",
                    cpu,
                )
                + errors
            )
        if "gateway" in ours.cpu:
            gateway = ours.cpu["gateway"] / ours.rate * 1000
            per_batch = (
                f"; {ours.requests / ours.batches:.1f} requests per batch" if ours.batches else ""
            )
            print(f"  streamops gateway CPU: {gateway:.2f} ms/req{per_batch}")
            if concurrency == max(results):
                print(f"  target gateway CPU <= 0.3 ms/req: {verdict(gateway <= 0.3)}")
        ratios = {name: ratio(ours, point) for name, point in points.items() if name != "streamops"}
        for name, (throughput, p50, p99, cost) in ratios.items():
            print(
                rows_fmt.format(
                    f"ratio streamops/{name}",
                    f"{throughput:.2f}x",
                    f"{p50:.2f}x",
                    f"{p99:.2f}x",
                    f"{cost:.2f}x",
                    "",
                )
            )
        noisy = max(point.cpu["other processes"] for point in points.values())
        if noisy > args.quiet_cores:
            print(f"  WARNING: other processes used up to {noisy:.2f} cores while measuring")
        print_targets(concurrency, ours, ratios)


def ratio(ours: Point, theirs: Point) -> tuple[float, float, float, float]:
    """streamops against a peer: throughput, p50, p99 and CPU per request."""
    return (
        ours.rate / theirs.rate,
        ours.p50_ms / theirs.p50_ms,
        ours.p99_ms / theirs.p99_ms,
        cpu_per_request(ours) / cpu_per_request(theirs),
    )


def print_targets(
    concurrency: int, ours: Point, ratios: dict[str, tuple[float, float, float, float]]
) -> None:
    """The targets of issue 12 (docs/benchmarks.md), for the peers that were measured."""
    if concurrency == 32:
        if "bentoml" in ratios:
            throughput, _, p99, _ = ratios["bentoml"]
            print(f"  target throughput >= 2x BentoML: {verdict(throughput >= 2)}")
            print(f"  target p99 <= 0.5x BentoML: {verdict(p99 <= 0.5)}")
        if "mlflow" in ratios:
            print(f"  target throughput >= 50x mlflow: {verdict(ratios['mlflow'][0] >= 50)}")
        if "streamops-nolog" in ratios:
            kept = ratios["streamops-nolog"][0]
            print(f"  target log on >= 0.95x log off (issue 13): {verdict(kept >= 0.95)}")
    if "streamops-noshadow" in ratios:
        rate, p50, p99, cpu = ratios["streamops-noshadow"]
        print(
            f"  shadow on / off (issue 14): throughput {rate:.2f}x, p50 {p50:.2f}x, "
            f"p99 {p99:.2f}x, CPU per request {cpu:.2f}x"
        )
    if concurrency == 1:
        print(f"  target p50 <= 3 ms: {verdict(ours.p50_ms <= 3)}")
        if "bentoml" in ratios:
            print(f"  target p50 <= 0.5x BentoML: {verdict(ratios['bentoml'][1] <= 0.5)}")


def cpu_per_request(point: Point) -> float:
    """Milliseconds of CPU the system under test spent per answered request."""
    cores = sum(v for k, v in point.cpu.items() if k not in NOT_THE_SYSTEM)
    return cores / point.rate * 1000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes per system")
    parser.add_argument(
        "--gateway-workers",
        type=int,
        default=None,
        help="of --workers, how many are gateway workers (default: half, at least 1); the rest "
        "are predictor replicas",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds per system, first")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each point; medians shown")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.3,
        help="before each point, wait until the idle machine uses at most this many cores",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=120.0, help="longest wait for a quiet machine (s)"
    )
    parser.add_argument(
        "--no-wrk", action="store_true", help="use the asyncio client even if wrk is on PATH"
    )
    parser.add_argument(
        "--peers-only", action="store_true", help="measure the peers alone, not streamops"
    )
    parser.add_argument("--no-mlflow", action="store_true", help="leave mlflow models serve out")
    parser.add_argument("--no-bentoml", action="store_true", help="leave BentoML out")
    parser.add_argument(
        "--log-cost",
        action="store_true",
        help="also measure streamops with the prediction log off (and run the logger for the "
        "one that logs): the log's cost, issue 13",
    )
    parser.add_argument(
        "--shadow-cost",
        type=float,
        default=None,
        metavar="SAMPLE",
        help="also register a challenger shadowing this share of the requests, and measure "
        "streamops with shadowing off beside it: a client's latency with shadow on, issue 14",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy profiles of the gateway and the predictors at the highest concurrency, "
        "written to this directory and summarised (bench/profiling.py)",
    )
    parser.add_argument(
        "--runtime",
        choices=["auto", "native"],
        default="auto",
        help="streamops' predictor runtime: auto serves the verified ONNX graph, native "
        "scikit-learn (STREAMOPS_PREDICTOR_RUNTIME)",
    )
    args = parser.parse_args()
    if args.log_cost and args.shadow_cost is not None:
        parser.error("--log-cost and --shadow-cost each need a system of their own: one at a time")
    if args.shadow_cost is not None and not 0 < args.shadow_cost <= 1:
        parser.error("--shadow-cost is a share in (0, 1]")
    args.levels = [int(c) for c in args.concurrency.split(",")]
    args.gateway_workers = args.gateway_workers or max(1, args.workers // 2)
    args.predictors = args.workers - args.gateway_workers
    if args.predictors < 1:
        parser.error("--workers must leave at least one predictor replica")
    return args


def peer_target(name: str, url: str, records: list[dict[str, float]], stack: Stack) -> Target:
    process = "mlflow-serve" if name == "mlflow" else name
    bodies = [batch_body(name, [r]) for r in records]
    return Target(url, bodies, {process: [stack.processes[process].pid]})


def start_systems(stack: Stack, args: argparse.Namespace) -> dict[str, Target]:
    """Redis, MLflow, the registered model, then both systems, each checked to answer."""
    work = stack.workdir
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    print(f"starting Redis and MLflow in {work} ...", flush=True)
    redis_url = stack.start_redis(persistent=False)
    # The tracking server's job runner (seven huey consumers, polling) costs about half a core
    # here while idle; neither system under test needs it.
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    tracking_uri = stack.start_mlflow()
    datasets = work / "datasets"
    write_spec(datasets)
    register(datasets, tracking_uri)
    records = sample_rows()
    targets: dict[str, Target] = {}
    if not args.no_mlflow:
        print(f"starting mlflow models serve -w {args.workers} ...", flush=True)
        mlflow_url = start_mlflow_serve(stack, tracking_uri, args.workers, env)
        targets["mlflow"] = peer_target("mlflow", f"{mlflow_url}/invocations", records, stack)
    if not args.no_bentoml:
        print(f"starting BentoML with {args.workers} workers ...", flush=True)
        model_uri = f"models:/{DATASET}@production"
        url = bentoml_peer.start(stack, model_uri, tracking_uri, args.workers, env["PATH"])
        targets["bentoml"] = peer_target("bentoml", f"{url}/predict", records, stack)
    if args.peers_only:
        return targets
    print(
        f"starting {args.predictors} predictor replica(s) and the gateway "
        f"({args.gateway_workers} worker(s)) ...",
        flush=True,
    )
    service_env = {
        "PATH": env["PATH"],
        "STREAMOPS_REDIS_URL": redis_url,
        "STREAMOPS_MLFLOW_TRACKING_URI": tracking_uri,
        "STREAMOPS_DATASETS_DIR": str(datasets),
        "STREAMOPS_FEATURE_STORE_ROOT": str(work / "feature-store"),
        "STREAMOPS_PREDICTOR_MODELS": DATASET,
        "STREAMOPS_PREDICTOR_RUNTIME": args.runtime,
        "STREAMOPS_GATEWAY_INBOX": str(work / "inbox"),
    }
    if args.log_cost:
        # The same system with the prediction log off; and the logger that compacts the log,
        # counted as part of the system that logs.
        print("starting streamops again with the prediction log off ...", flush=True)
        off = {"STREAMOPS_PREDICTOR_LOG_PREDICTIONS": "false"}
        targets["streamops-nolog"] = beside(stack, service_env, off, records, args, prefix="nolog-")
        stack.start_service("ingestor", "ingestor", service_env)
    if args.shadow_cost is not None:
        # A challenger shadowing the given share, and the same system with shadowing off (the
        # registry is shared: the switch is the replicas').
        from shared.registry import MlflowRegistry

        challenger = register(datasets, tracking_uri, seed=2, alias="bench-candidate")
        MlflowRegistry(tracking_uri).set_shadow(DATASET, challenger, args.shadow_cost)
        print("starting streamops again with shadowing off ...", flush=True)
        off = {"STREAMOPS_PREDICTOR_SHADOW": "false"}
        targets["streamops-noshadow"] = beside(
            stack, service_env, off, records, args, prefix="noshadow-"
        )
    ours_url = start_streamops(stack, service_env, args.gateway_workers, args.predictors)
    check_agreement(dict(targets), ours_url, records)
    targets["streamops"] = streamops_target(
        stack, ours_url, records, args, batches=batches_sent(redis_url)
    )
    return targets


def beside(
    stack: Stack,
    service_env: dict[str, str],
    changed: dict[str, str],
    records: list[dict[str, float]],
    args: argparse.Namespace,
    *,
    prefix: str,
) -> Target:
    """The same system with `changed` settings, on a Redis database of its own."""
    env = {**service_env, **changed}
    env["STREAMOPS_REDIS_URL"] = other_database(service_env["STREAMOPS_REDIS_URL"])
    url = start_streamops(stack, env, args.gateway_workers, args.predictors, prefix)
    batches = batches_sent(env["STREAMOPS_REDIS_URL"])
    return streamops_target(stack, url, records, args, batches=batches, prefix=prefix)


def other_database(redis_url: str) -> str:
    """The same Redis server, database 1: a second system that shares nothing with the first."""
    from urllib.parse import urlparse

    return urlparse(redis_url)._replace(path="/1").geturl()


def streamops_target(
    stack: Stack,
    url: str,
    records: list[dict[str, float]],
    args: argparse.Namespace,
    *,
    batches: Callable[[], int],
    prefix: str = "",
) -> Target:
    groups = {
        "gateway": [stack.processes[f"{prefix}gateway"].pid],
        "predictors": [
            stack.processes[f"{prefix}predictor-{i}"].pid for i in range(args.predictors)
        ],
        "redis": [stack.processes["redis"].pid],
    }
    if not prefix and "ingestor" in stack.processes:
        groups["logger"] = [stack.processes["ingestor"].pid]
    return Target(
        f"{url}/v1/models/{DATASET}/predict",
        [json.dumps({"rows": [r]}).encode() for r in records],
        groups,
        batches,
    )


def main() -> None:
    args = parse_args()
    split = (
        f"{args.workers} per peer against streamops {args.gateway_workers} "
        f"gateway worker(s) + {args.predictors} predictor replica(s)"
    )
    with tempfile.TemporaryDirectory(prefix="streamops-bench-serve-", dir=args.workdir) as tmp:
        stack = Stack(Path(tmp))
        wrk = None if args.no_wrk else shutil.which("wrk")
        load: Generator = Wrk(wrk, stack.workdir) if wrk else AsyncioLoad()
        try:
            targets = start_systems(stack, args)
            results = run_points(load, targets, args.levels, args)
        finally:
            stop(stack)
    if args.peers_only:
        for concurrency, points in results.items():
            for name, point in points.items():
                cpu = ", ".join(f"{k} {v:.2f}" for k, v in point.cpu.items())
                print(
                    f"{PEERS[name]} ({args.workers} workers), concurrency {concurrency}: "
                    f"{point.rate:,.0f} req/s, p50 {point.p50_ms:.1f} ms, p99 "
                    f"{point.p99_ms:.1f} ms, {cpu_per_request(point):.2f} CPU ms/req "
                    f"(CPU cores: {cpu}) [{load.name}]"
                )
        return
    report(results, args, load.name, split)


def run_points(
    load: Generator, targets: dict[str, Target], levels: list[int], args: argparse.Namespace
) -> dict[int, dict[str, Point]]:
    """Warm each system up, then every point, one system at a time, alternating systems."""
    for name, target in targets.items():
        print(f"warming up {name} ({args.warmup:g} s at concurrency {max(levels)}) ...", flush=True)
        load.run(target.url, target.bodies, max(levels), args.warmup)
    runs: dict[int, dict[str, list[Point]]] = {c: {n: [] for n in targets} for c in levels}
    for repetition in range(args.repeat):
        for concurrency in levels:
            for name, target in targets.items():
                idle = wait_for_quiet(args.quiet_cores, args.quiet_wait)
                profiles = profile_point(args, name, concurrency, repetition, target)
                point = measure(load, target, concurrency, args.duration)
                if profiles is not None:
                    profiles.finish()
                runs[concurrency][name].append(point)
                print(
                    f"  run {repetition + 1} c={concurrency:<3} {name:<10} {point.rate:>8,.0f} "
                    f"req/s  p50 {point.p50_ms:7.1f} ms  p99 {point.p99_ms:7.1f} ms  "
                    f"(machine busy before: {idle:.2f} cores; other processes during: "
                    f"{point.cpu['other processes']:.2f})"
                    + (f"  {point.errors} errors" if point.errors else "")
                    + (
                        f"  {point.requests / point.batches:.1f} req/batch" if point.batches else ""
                    ),
                    flush=True,
                )
    return {c: {n: combine(points) for n, points in pair.items()} for c, pair in runs.items()}


def profile_point(
    args: argparse.Namespace, name: str, concurrency: int, repetition: int, target: Target
) -> profiling.Profiles | None:
    """With --profile: py-spy on streamops' processes during its first point at the highest
    concurrency (py-spy's own CPU shows as other processes)."""
    if args.profile is None or name != "streamops" or repetition > 0:
        return None
    if concurrency != max(args.levels):
        return None
    profiles = profiling.Profiles(args.profile, args.duration)
    groups = {k: v for k, v in target.groups.items() if k in ("gateway", "predictors")}
    profiles.start(groups)
    return profiles


def stop(stack: Stack) -> None:
    """Stop every process this run started, children included (each leads its own group)."""
    leaders = [proc.pid for proc in stack.processes.values()]
    signal_groups(leaders, signal.SIGTERM)
    stack.stop()
    time.sleep(0.5)
    signal_groups(leaders, signal.SIGKILL)


def signal_groups(leaders: list[int], sig: int) -> None:
    for pid in leaders:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)


if __name__ == "__main__":
    main()
