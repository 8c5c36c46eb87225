"""Fixtures shared by every test layer."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from shared.datasets import DatasetSpec, load_spec
from shared.settings import BUNDLED_DATASETS, CommonSettings, IngestorSettings
from streamops.stack import S3_BUCKET, Stack, local_stack
from tests.support.data import write_churn_spec
from tests.support.servers import INSTALL_HINT, mlflow_server, postgres_dsn, redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    try:
        with redis_server() as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(f"{exc}\n{INSTALL_HINT}", pytrace=False)


@pytest.fixture
def redis_db(redis_url: str) -> str:
    """A Redis URL whose database is empty when the test starts."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return redis_url


@pytest.fixture
def churn_spec() -> DatasetSpec:
    return load_spec(BUNDLED_DATASETS, "churn")


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def make_settings(tmp_path: Path, inbox: Path) -> Callable[..., IngestorSettings]:
    """Ingestor settings rooted in the test's temporary directory."""

    def make(redis_url: str = "redis://127.0.0.1:1/0", **overrides: Any) -> IngestorSettings:
        common_keys = set(CommonSettings.model_fields)
        common_over = {k: v for k, v in overrides.items() if k in common_keys}
        own = {k: v for k, v in overrides.items() if k not in common_keys}
        defaults: dict[str, Any] = {
            "redis_url": redis_url,
            "feature_store_root": tmp_path / "feature-store",
            "datasets_dir": BUNDLED_DATASETS,
            "lease_ms": 1500,
            "claim_interval_ms": 100,
            # The handler tests' Redis does not exist: no fence before their fake acks. The
            # fence is tested on real servers (test_cluster_redis, the cluster e2e).
            "redis_wait_replicas": 0,
        }
        common = CommonSettings(**(defaults | common_over))
        own.setdefault("data_roots", [BUNDLED_DATASETS, inbox])
        return IngestorSettings(common=common, **own)

    return make


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (marked `anyio`) run on asyncio, as the services do."""
    return "asyncio"


@pytest.fixture(scope="session")
def mlflow_url() -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend) for the session; this process logs to it."""
    import mlflow

    with mlflow_server() as url:
        mlflow.set_tracking_uri(url)
        yield url


@dataclass(frozen=True)
class LocalCluster:
    """A Redis Cluster of 3 masters and 3 replicas, as local processes of `stack`."""

    nodes: list[str]
    stack: Stack

    @property
    def env(self) -> dict[str, str]:
        """What points a service at it."""
        first = self.nodes[0]
        return {
            "STREAMOPS_REDIS_URL": f"redis://{first}/0",
            "STREAMOPS_REDIS_CLUSTER_NODES": ",".join(self.nodes),
        }

    def common(self, **overrides: Any) -> CommonSettings:
        return CommonSettings(
            redis_url=f"redis://{self.nodes[0]}/0", redis_cluster_nodes=self.nodes, **overrides
        )

    def replica_process(self, master: str) -> subprocess.Popen[bytes]:
        """The process of the node replicating `master` now (failovers change it)."""
        port = int(master.rpartition(":")[2])
        for node in self.nodes:
            host, _, own = node.rpartition(":")
            with redis.Redis(host=host, port=int(own)) as client:
                info: Any = client.info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == port:
                return self.stack.processes[f"redis-node-{own}"]
        raise AssertionError(f"{master} has no replica")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster for every `cluster` test of the session: it takes a few seconds to form."""
    with local_stack(tmp_path_factory.mktemp("cluster")) as stack:
        try:
            nodes = stack.start_redis_cluster(masters=3, replicas=1)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            pytest.fail(f"no local Redis Cluster: {exc}\n{INSTALL_HINT}", pytrace=False)
        yield LocalCluster(nodes, stack)


@dataclass(frozen=True)
class LocalS3:
    """A local S3 API (moto's server) with one bucket; the test process is pointed at it."""

    env: dict[str, str]
    bucket: str

    def prefix(self, name: str) -> str:
        """An `s3://` prefix of a test's own (the bucket is shared by the session)."""
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """One S3 API for every `s3` test of the session, its AWS variables set in this process
    (pyarrow and boto3 read them; services started by bring_up inherit them)."""
    with local_stack(tmp_path_factory.mktemp("s3")) as stack, pytest.MonkeyPatch.context() as env:
        try:
            variables = stack.start_s3()
        except RuntimeError as exc:
            hint = "moto's server comes with the test extras: make deps-test"
            pytest.fail(f"no local S3 API: {exc} ({hint})", pytrace=False)
        for name, value in variables.items():
            env.setenv(name, value)
        forget_s3_clients()
        yield LocalS3(variables, S3_BUCKET)
    forget_s3_clients()


def forget_s3_clients() -> None:
    """The process's S3 clients read the variables when made: made again after they change."""
    from shared import storage

    storage.s3_filesystem.cache_clear()
    storage.s3_client.cache_clear()


@pytest.fixture
def postgres_db() -> Iterator[str]:
    """A throwaway database on the local PostgreSQL server."""
    admin_dsn = postgres_dsn()
    name = f"streamops_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(admin_dsn, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {admin_dsn} (set POSTGRES_DSN): {exc}")
    with admin.cursor() as cur:
        cur.execute(f"create database {name}")
    url = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(f"drop database if exists {name} with (force)")
        admin.close()


@pytest.fixture
def datasets(tmp_path: Path) -> tuple[Path, str]:
    """The churn spec under a model name of this test's own (the MLflow server is shared)."""
    return tmp_path / "datasets", write_churn_spec(tmp_path / "datasets", "churn")
