"""The four services as processes against a local Redis Cluster (3 masters, 3 replicas).

First the whole flow: a CSV announced with redis-cli (`-c`, the README's XADD line) is
ingested, trained, promoted and served over HTTP. Then a master is killed with SIGKILL while
data arrives and predictions are asked for, once with the ingestor acking at once and once with
`STREAMOPS_REDIS_WAIT_REPLICAS=1`. The services follow the failover without a restart; every
acknowledged `data-arrived` ends as exactly one dataset version; the window of failed
predictions and the acknowledged events lost are measured and written out (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from shared.broker import redis_client, sync_redis_client
from shared.keys import heartbeat_key
from shared.replication import Replication
from shared.settings import BUNDLED_DATASETS
from shared.wire import text
from streamops.stack import Running, bring_up, cluster_ok, replicas_online
from tests.conftest import LocalCluster
from tests.support.data import CHURN_ROW, write_churn_spec
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]
# Where the failover figures go, beside the test's own output (`make test` prints them too).
FIGURES = Path(os.environ.get("STREAMOPS_CLUSTER_FIGURES", "var/cluster-failover.json"))


@dataclass
class World:
    cluster: LocalCluster
    running: Running
    redis: redis.Redis
    model: str
    inbox: Path
    store: Path
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        assert self.running.gateway_url is not None
        return self.running.gateway_url

    def events(self, stream: str) -> list[dict[str, Any]]:
        entries: Any = self.redis.xrange(stream)
        return [json.loads(fields[b"__data__"]) for _, fields in entries]

    def master_of(self, key: str) -> str:
        node: Any = self.redis.get_node_from_key(key)  # type: ignore[attr-defined]
        return str(node.name)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, redis_cluster: LocalCluster, mlflow_url: str
) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("cluster-e2e")
    model = write_churn_spec(workdir / "datasets", "churn-cluster", rollout={"guard": False})
    with pytest.MonkeyPatch.context() as env:
        for name, value in redis_cluster.env.items():
            env.setenv(name, value)
        env.setenv("STREAMOPS_MLFLOW_TRACKING_URI", mlflow_url)
        env.setenv("STREAMOPS_DATASETS_DIR", str(workdir / "datasets"))
        env.setenv("STREAMOPS_PREDICTOR_MODELS", model)
        env.setenv("STREAMOPS_GATEWAY_WORKERS", "1")
        # A message whose ack the failover swallowed is taken again after 3 s, not 30.
        env.setenv("STREAMOPS_LEASE_MS", "3000")
        env.setenv("STREAMOPS_CLAIM_INTERVAL_MS", "200")
        stack = redis_cluster.stack
        client = sync_redis_client(redis_cluster.common())
        started = set(stack.processes)
        try:
            running = bring_up(stack, ("ingestor", "trainer", "predictor", "gateway"))
            inbox = Path(running.env["STREAMOPS_GATEWAY_INBOX"])
            store = Path(running.env["STREAMOPS_FEATURE_STORE_ROOT"])
            yield World(redis_cluster, running, client, model, inbox, store)
        finally:
            # The cluster is the session's: stop only this module's services.
            for name in [n for n in stack.processes if n not in started]:
                stack.kill(name, 15)
            client.close()


def test_announced_with_redis_cli_ingested_trained_promoted_and_served(world: World) -> None:
    shutil.copy(BUNDLED_DATASETS / "churn" / "churn.csv", world.inbox / "customers.csv")
    host, _, port = world.cluster.nodes[0].rpartition(":")
    cli = shutil.which("redis-cli")
    assert cli is not None
    # -c: redis-cli follows the cluster's MOVED answers to the master of `data-arrived`.
    argv = [cli, "-c", "-h", host, "-p", port, "XADD", "data-arrived", "*"]
    subprocess.run([*argv, "dataset", "churn", "source", "customers.csv"], check=True)

    def served() -> bool:
        url = f"{world.gateway}/v1/models/{world.model}/predict"
        return httpx.post(url, json={"rows": [CHURN_ROW]}, timeout=10).status_code == 200

    wait_until(served, timeout=300, interval=0.5, what="the announced CSV's model served")
    (promoted,) = [e for e in world.events("model-promoted") if e["model_name"] == world.model]
    assert promoted["version"] == 1


@dataclass
class Traffic:
    """What the load saw: acknowledged arrivals, and each prediction's outcome in time."""

    acked: dict[str, str] = field(default_factory=dict)  # correlation id -> source
    entry_ids: dict[str, str] = field(default_factory=dict)  # correlation id -> stream id
    acked_at: list[float] = field(default_factory=list)
    publish_errors: int = 0
    # (start, end, outcome): the HTTP status, or the name of the exception
    answers: list[tuple[float, float, int | str]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # step -> when it was taken


Step = tuple[float, str, Callable[[], None]]


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("scenario", "wait_replicas"),
    [("failover", 0), ("failover", 1), ("lagging-replica", 0), ("lagging-replica", 1)],
)
def test_a_master_killed_under_load_loses_no_acknowledged_arrival(
    world: World, scenario: str, wait_replicas: int
) -> None:
    """`failover`: the master of `data-arrived` is killed under load. `lagging-replica`: its
    replica is cut off (stopped, its link dropped) for 1.5 s of load first, so that the master
    acknowledges writes the replica never gets; then the master is killed and the replica
    resumed, and takes over without them."""
    stack = world.cluster.stack
    if "trainer" in stack.processes:
        stack.kill("trainer", 15)  # its fits would only compete for the two cores
    _restart_ingestor(world, wait_replicas)
    victim = world.master_of("data-arrived")
    replica = world.cluster.replica_process(victim)
    sources = _slices(world.inbox, f"{scenario}-w{wait_replicas}", count=40)
    before = {e["correlation_id"] for e in world.events("data-ingested")}

    started = time.monotonic()
    steps = _faults(world, scenario, victim, replica)
    traffic = asyncio.run(_load(world, sources, wait_replicas, steps))
    survivor = next(n for n in world.cluster.nodes if n != victim)
    assert cluster_ok(survivor), "the cluster did not fail over"

    # Every acknowledged arrival ends as exactly one version, with no service restarted.
    def outcomes() -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for event in world.events("data-ingested"):
            if event["correlation_id"] in traffic.acked:
                found.setdefault(event["correlation_id"], []).append(event["version"])
        return found

    # An acknowledged entry the failover took from the stream will never be read: only the
    # others are waited for. What is missing at the deadline is counted as lost.
    arrived: Any = world.redis.xrange("data-arrived")
    on_stream = {text(entry_id) for entry_id, _ in arrived}
    entries_lost = [cid for cid, entry in traffic.entry_ids.items() if entry not in on_stream]
    readable = set(traffic.acked) - set(entries_lost)
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: set(outcomes()) >= readable, timeout=120, what="outcomes")
    seen = outcomes()
    lost = sorted(set(traffic.acked) - set(seen))
    versions = {cid: set(v) for cid, v in seen.items()}
    assert all(len(v) == 1 for v in versions.values()), versions  # one version per arrival
    assert len({next(iter(v)) for v in versions.values()}) == len(versions)
    assert not (set(seen) & before)
    for name, proc in stack.processes.items():
        if not name.startswith("redis-node"):
            assert proc.poll() is None, f"{name} died"

    tail = traffic.answers[-20:]
    assert tail, "no predictions were asked for"
    assert all(what == 200 for _, _, what in tail), "predictions still failing at the end"
    figures = {
        "scenario": scenario,
        "wait_replicas": wait_replicas,
        "arrivals_acknowledged": len(traffic.acked),
        "entries_lost": len(entries_lost),
        "arrivals_lost": len(lost),
        **_prediction_figures(traffic),
        "load_s": round(time.monotonic() - started, 1),
    }
    _write_figures(figures)
    print(f"\nfailover figures: {figures}")
    if wait_replicas:  # with WAIT, what was acknowledged survives any one node
        assert not lost, f"acknowledged but lost: {lost}"
        assert not entries_lost, f"acknowledged entries gone from the stream: {entries_lost}"

    def whole_again() -> bool:
        masters = [n for n in world.cluster.nodes if replicas_online(n) > 0]
        return len(masters) == 3 and all(cluster_ok(n) for n in world.cluster.nodes)

    wait_until(whole_again, timeout=60, interval=0.2, what="the cluster whole again")


def _faults(
    world: World, scenario: str, victim: str, replica: subprocess.Popen[bytes]
) -> list[Step]:
    stack = world.cluster.stack

    def kill() -> None:
        stack.kill(f"redis-node-{victim.rpartition(':')[2]}")

    steps: list[Step] = [(3.0, "kill", kill)]
    if scenario == "lagging-replica":

        def cut_off() -> None:
            # Stopped, and its link dropped by the master: nothing written from now on
            # reaches it (a stopped replica's socket would still buffer what was sent).
            replica.send_signal(signal.SIGSTOP)
            host, _, port = victim.rpartition(":")
            with redis.Redis(host=host, port=int(port)) as master:
                master.execute_command("CLIENT", "KILL", "TYPE", "replica")

        # Shorter than the node timeout (2 s): the cluster does not mark the replica failed.
        steps = [
            (3.0, "replica cut off", cut_off),
            (1.5, "kill", kill),
            (0.0, "replica resumed", lambda: replica.send_signal(signal.SIGCONT)),
        ]
    # As a supervisor would: the node is back 8 s after it died, and rejoins as a replica of
    # the one that took its slots over.
    steps.append((8.0, "restart", lambda: stack.restart_redis_node(victim)))
    return steps


def _prediction_figures(traffic: Traffic) -> dict[str, Any]:
    """The failed predictions around the kill, and how long acks stalled after it."""
    killed = traffic.marks["kill"]
    failed = [(s, e, what) for s, e, what in traffic.answers if what != 200]
    window = (max(e for _, e, _ in failed) - min(s for s, _, _ in failed)) if failed else 0.0
    gaps = [b - a for a, b in itertools.pairwise(traffic.acked_at) if b > killed]
    return {
        "publish_errors": traffic.publish_errors,
        "predictions": len(traffic.answers),
        "predictions_failed": len(failed),
        "failed_window_s": round(window, 2),
        "failures_from_kill_s": [round(s - killed, 2) for s, _, _ in failed[:1] + failed[-1:]],
        "failure_kinds": sorted({str(what) for _, _, what in failed}),
        "longest_ack_gap_after_kill_s": round(max(gaps, default=0.0), 2),
        "node_restarted_after_s": round(traffic.marks["restart"] - killed, 2),
    }


def _restart_ingestor(world: World, wait_replicas: int) -> None:
    stack = world.cluster.stack
    for name in [n for n in stack.processes if n.startswith("ingestor")]:
        stack.kill(name, 15)
    before = set(world.redis.scan_iter(match=heartbeat_key("ingestor", "*")))
    env = {**world.running.env, "STREAMOPS_REDIS_WAIT_REPLICAS": str(wait_replicas)}
    stack.start_service(f"ingestor-w{wait_replicas}", "ingestor", env)
    wait_until(
        lambda: set(world.redis.scan_iter(match=heartbeat_key("ingestor", "*"))) - before,
        timeout=60,
        what="the ingestor's heartbeat",
    )


def _slices(inbox: Path, tag: str, count: int) -> list[str]:
    """`count` CSVs of distinct content (each its own version): windows of the churn data."""
    lines = (BUNDLED_DATASETS / "churn" / "churn.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    names = []
    for n in range(count):
        name = f"slice-{tag}-{n}.csv"
        (inbox / name).write_text("\n".join([header, *rows[n * 50 : n * 50 + 300]]) + "\n")
        names.append(name)
    return names


async def _load(
    world: World,
    sources: list[str],
    wait_replicas: int,
    steps: list[Step],
) -> Traffic:
    traffic = Traffic()
    client = redis_client(world.cluster.common())
    fence = Replication(client, wait_replicas, 1000)
    done = asyncio.Event()

    async def arrive() -> None:
        for source in sources:
            cid = str(uuid.uuid4())
            while True:  # a producer retries until its XADD is acknowledged
                try:
                    fields = {"dataset": "churn", "source": source, "correlation_id": cid}
                    entry = await client.xadd("data-arrived", fields)  # type: ignore[arg-type]
                    await fence.settle()
                    traffic.acked[cid] = source
                    traffic.entry_ids[cid] = text(entry)
                    traffic.acked_at.append(time.monotonic())
                    break
                except Exception:
                    traffic.publish_errors += 1
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.25)

    async def ask(http: httpx.AsyncClient) -> None:
        url = f"/v1/models/{world.model}/predict"
        while not done.is_set():
            start = time.monotonic()
            what: int | str
            try:
                what = (await http.post(url, json={"rows": [CHURN_ROW]})).status_code
            except httpx.HTTPError as exc:
                what = type(exc).__name__
            traffic.answers.append((start, time.monotonic(), what))
            if what != 200:
                await asyncio.sleep(0.05)

    async def faults() -> None:
        for after_s, name, step in steps:
            await asyncio.sleep(after_s)
            traffic.marks[name] = time.monotonic()
            await asyncio.to_thread(step)

    async with httpx.AsyncClient(base_url=world.gateway, timeout=10) as http:
        askers = [asyncio.create_task(ask(http)) for _ in range(4)]
        await asyncio.gather(arrive(), faults())
        # A few seconds more of predictions once the arrivals are in: the tail must be served.
        await asyncio.sleep(3)
        done.set()
        await asyncio.gather(*askers)
    await fence.aclose()
    await client.aclose()
    traffic.answers.sort()
    return traffic


def _write_figures(figures: dict[str, Any]) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    known[f"{figures['scenario']}, wait_replicas={figures['wait_replicas']}"] = figures
    FIGURES.write_text(json.dumps(known, indent=2) + "\n")
