"""Real servers for tests: Redis through testcontainers when a Docker engine answers, else the
local `redis-server` binary on a free port. Never a silent skip: no Redis is a test failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.waiting import wait_until

INSTALL_HINT = (
    "no Redis server for the tests: set REDIS_URL, start a Docker engine, or install the "
    "redis-server binary (Debian: apt-get install redis-server)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    with local_redis(binary) as url:
        yield url


@contextlib.contextmanager
def local_redis(binary: str = "redis-server", appendonly: bool = False) -> Iterator[str]:
    """Start `redis-server` on a free port in a temporary directory."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="streamops-redis-") as workdir:
        args = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            workdir,
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
        ]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: _pings(port), timeout=10, what=f"redis-server on port {port}")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def postgres_dsn() -> str:
    """The local PostgreSQL server (POSTGRES_DSN overrides); failing loudly when absent."""
    return os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
