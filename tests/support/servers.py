"""Real servers for tests: Redis through testcontainers when a Docker engine answers, else the
local `redis-server` binary on a free port. Never a silent skip: no Redis is a test failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from streamops.stack import local_stack

INSTALL_HINT = (
    "no Redis server for the tests: set REDIS_URL, start a Docker engine, or install the "
    "redis-server binary (Debian: apt-get install redis-server)"
)


def docker_answers() -> bool:
    if shutil.which("docker") is None and not os.environ.get("DOCKER_HOST"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A Redis URL for the test session."""
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    if docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7.0") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
        return
    if shutil.which("redis-server") is None:
        raise RuntimeError(INSTALL_HINT)
    with (
        tempfile.TemporaryDirectory(prefix="streamops-redis-") as workdir,
        local_stack(Path(workdir)) as stack,
    ):
        yield stack.start_redis(persistent=False)


def postgres_dsn() -> str:
    """The local PostgreSQL server (POSTGRES_DSN overrides); failing loudly when absent."""
    return os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def mlflow_server() -> Iterator[str]:
    """An MLflow tracking server for the test session: MLFLOW_TRACKING_URI when set, else
    `mlflow server` on a free port with a SQLite backend and a local artifact root."""
    if url := os.environ.get("MLFLOW_TRACKING_URI"):
        yield url
        return
    with (
        tempfile.TemporaryDirectory(prefix="streamops-mlflow-") as workdir,
        local_stack(Path(workdir)) as stack,
    ):
        yield stack.start_mlflow()
