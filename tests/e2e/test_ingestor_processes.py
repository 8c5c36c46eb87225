"""The ingestor as separate processes, driven with nothing but redis-cli, as a new user would."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.feature_store import FeatureStore
from shared.settings import BUNDLED_DATASETS
from streamops.stack import Stack, local_stack
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


class Cli:
    """redis-cli against the test's Redis."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-u", self.url, *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return done.stdout

    def events(self, stream: str) -> list[dict[str, Any]]:
        """XRANGE output (--json: one entry as [id, [field, value, ...]]) decoded."""
        raw = json.loads(self("--json", "XRANGE", stream, "-", "+") or "[]")
        found = []
        for _, fields in raw:
            pairs = dict(zip(fields[::2], fields[1::2], strict=True))
            found.append(json.loads(pairs["__data__"]))
        return found

    def heartbeats(self) -> int:
        return len(self("KEYS", "streamops:heartbeat:{ingestor}:*").split())

    def pending(self, stream: str, group: str) -> int:
        return int(self("XPENDING", stream, group).split()[0])


@pytest.fixture
def world(tmp_path: Path, redis_db: str) -> Iterator[tuple[Stack, Cli, dict[str, str]]]:
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is needed (Debian: apt-get install redis-tools)")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    env = {
        "STREAMOPS_REDIS_URL": redis_db,
        "STREAMOPS_FEATURE_STORE_ROOT": str(tmp_path / "store"),
        "STREAMOPS_INGESTOR_DATA_ROOTS": f"{BUNDLED_DATASETS},{inbox}",
        "STREAMOPS_LEASE_MS": "2000",
        "STREAMOPS_CLAIM_INTERVAL_MS": "200",
    }
    with local_stack(tmp_path) as stack:
        yield stack, Cli(redis_db), env


def _start(stack: Stack, name: str, env: dict[str, str], cli: Cli) -> None:
    """Start an ingestor and wait for its heartbeat (written once its subscribers run)."""
    before = cli.heartbeats()
    stack.start_service(name, "ingestor", env)
    wait_until(
        lambda: cli.heartbeats() > before, timeout=60, what=f"{name} alive (log: {stack.log(name)})"
    )


def _xadd_csv(cli: Cli, uri: str) -> str:
    body = json.dumps({"dataset": "churn", "source": {"kind": "csv", "uri": uri}})
    return cli("XADD", "data-arrived", "*", "__data__", body).strip()


def test_redis_cli_alone_drives_a_whole_ingest(
    world: tuple[Stack, Cli, dict[str, str]], tmp_path: Path
) -> None:
    stack, cli, env = world
    _start(stack, "ingestor", env, cli)

    _xadd_csv(cli, "churn/churn.csv")
    (event,) = wait_until(lambda: cli.events("data-ingested"), timeout=60, what="data-ingested")
    assert (event["version"], event["rows"], event["quarantined_rows"]) == (1, 4992, 8)
    store = FeatureStore(tmp_path / "store")
    assert store.quarantine("churn", 1).num_rows == 8

    _xadd_csv(cli, "churn/churn.csv")
    wait_until(lambda: len(cli.events("data-ingested")) == 2, timeout=60, what="second event")
    assert cli.events("data-ingested")[1]["new_version"] is False
    assert len(store.versions("churn")) == 1

    no_plan = tmp_path / "inbox" / "no-plan.csv"
    header, *lines = (BUNDLED_DATASETS / "churn" / "churn.csv").read_text().splitlines()[:50]
    drop = header.split(",").index("plan")
    no_plan.write_text(
        "\n".join(
            ",".join(c for i, c in enumerate(line.split(",")) if i != drop)
            for line in [header, *lines]
        )
        + "\n"
    )
    _xadd_csv(cli, str(no_plan))
    (rejected,) = wait_until(lambda: cli.events("data-rejected"), timeout=60, what="rejection")
    assert rejected["kind"] == "schema_drift"
    assert len(store.versions("churn")) == 1

    cli("XADD", "data-arrived", "*", "__data__", "this is not json")
    cli("XADD", "data-arrived", "*", "dataset", "ghost", "source", "x.csv")
    cli("XADD", "data-arrived", "*", "dataset", "churn", "source", "churn/churn.csv")
    wait_until(lambda: len(cli.events("{data-arrived}.dlq")) == 2, timeout=60, what="dead letters")
    letters = cli.events("{data-arrived}.dlq")
    assert "not JSON" in str(letters[0]["reason"])
    assert "no dataset spec for 'ghost'" in str(letters[1]["reason"])
    wait_until(
        lambda: len(cli.events("data-ingested")) == 3,
        timeout=60,
        what="the good event after the poison ones",
    )
    assert cli.pending("data-arrived", "ingestor") == 0


def _big_csv(path: Path, copies: int) -> None:
    text = (BUNDLED_DATASETS / "churn" / "churn.csv").read_text()
    header, body = text.split("\n", 1)
    with path.open("w") as f:
        f.write(header + "\n")
        for _ in range(copies):
            f.write(body)


def test_kill_9_mid_file_then_restart_makes_exactly_one_version(
    world: tuple[Stack, Cli, dict[str, str]], tmp_path: Path
) -> None:
    stack, cli, env = world
    big = tmp_path / "inbox" / "big.csv"
    _big_csv(big, copies=100)  # 500,000 rows
    # Small blocks make the ingest long enough to be caught in the middle.
    slow = {**env, "STREAMOPS_INGESTOR_BLOCK_SIZE_BYTES": "65536"}
    _start(stack, "first", slow, cli)
    _xadd_csv(cli, str(big))
    staging = tmp_path / "store" / "churn" / ".staging"
    wait_until(
        lambda: staging.is_dir() and any(staging.iterdir()),
        timeout=60,
        what="the first ingestor writing",
        interval=0.01,
    )
    stack.kill("first", signal.SIGKILL)
    assert cli.events("data-ingested") == [], "the ingest finished before the kill"
    assert cli.pending("data-arrived", "ingestor") == 1

    _start(stack, "second", env, cli)
    (event,) = wait_until(
        lambda: cli.events("data-ingested"),
        timeout=120,
        what="the second ingestor finishing the job",
    )
    assert event["rows"] + event["quarantined_rows"] == 500_000
    store = FeatureStore(tmp_path / "store")
    assert [v.version for v in store.versions("churn")] == [1]
    wait_until(lambda: cli.pending("data-arrived", "ingestor") == 0, timeout=30, what="ack")
    assert not any(staging.iterdir())


def test_several_ingestors_share_the_work_and_each_event_is_handled_once(
    world: tuple[Stack, Cli, dict[str, str]], tmp_path: Path
) -> None:
    stack, cli, env = world
    _start(stack, "one", env, cli)
    _start(stack, "two", env, cli)
    big = tmp_path / "inbox" / "big.csv"
    _big_csv(big, copies=20)
    _xadd_csv(cli, str(big))  # keeps one of them busy for a while
    text = (BUNDLED_DATASETS / "churn" / "churn.csv").read_text().splitlines()
    for n in range(5):
        part = tmp_path / "inbox" / f"part{n}.csv"
        part.write_text("\n".join([text[0], *text[1 + n * 100 : 1 + (n + 1) * 100]]) + "\n")
        _xadd_csv(cli, str(part))
    wait_until(lambda: len(cli.events("data-ingested")) >= 6, timeout=90, what="six versions")
    assert sorted(e["version"] for e in cli.events("data-ingested")) == [1, 2, 3, 4, 5, 6]
    assert len(FeatureStore(tmp_path / "store").versions("churn")) == 6
    wait_until(lambda: cli.pending("data-arrived", "ingestor") == 0, timeout=30, what="acks")
    consumers = cli("XINFO", "CONSUMERS", "data-arrived", "ingestor")
    assert consumers.count("name") == 2, f"one ingestor did all the work: {consumers}"


def test_losing_the_consumer_group_stops_the_ingestor_with_a_failure(
    world: tuple[Stack, Cli, dict[str, str]],
) -> None:
    stack, cli, env = world
    _start(stack, "ingestor", env, cli)
    cli("FLUSHALL")  # what a Redis restart without persistence does
    process = stack.processes["ingestor"]
    wait_until(lambda: process.poll() is not None, timeout=30, what="the ingestor exiting")
    assert process.returncode == 1, stack.log("ingestor").read_text()[-2000:]
