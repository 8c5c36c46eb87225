"""Running the topology as local processes: a Redis server and the services, each with a log.

Used by `make demo`, `streamops up` and the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.keys import heartbeat_key

# The bucket `up --s3` creates on its local S3 API (docs/storage.md).
S3_BUCKET = "streamops"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cluster_port() -> int:
    """A free port for a cluster node whose bus port (10,000 higher) is free too."""
    for _ in range(1000):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.05)


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def cluster_ok(node: str) -> bool:
    """Whether the cluster node `node` ("host:port") says the cluster serves every slot."""
    host, _, port = node.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5) as sock:
            sock.sendall(b"CLUSTER INFO\r\n")
            return b"cluster_state:ok" in sock.recv(4096)
    except OSError:
        return False


def replicas_online(node: str) -> int:
    """How many replicas of the master `node` are connected and in sync (0 for a replica)."""
    import redis

    from shared.replication import in_sync

    host, _, port = node.rpartition(":")
    with redis.Redis(host=host, port=int(port), socket_timeout=1) as client:
        info: Any = client.info("replication")
    return in_sync(info)


def http_ok(url: str) -> bool:
    """Whether `url` answers 200 within a second (a process's health or readiness route)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Stack:
    """Processes started here, stopped together (in reverse order) on exit."""

    workdir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _node_argv: dict[str, list[str]] = field(default_factory=dict)

    def log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def start_redis(self, persistent: bool = True) -> str:
        """A redis-server on a free port, its files in `workdir/redis`: the URL."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (Debian: apt-get install redis-server), "
                "or point STREAMOPS_REDIS_URL at a Redis server"
            )
        port = free_port()
        data = self.workdir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        appendonly = "yes" if persistent else "no"
        argv = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            appendonly,
            "--save",
            "",
        ]
        self.spawn("redis", argv)
        wait_for(lambda: redis_answers(port), 15, f"redis-server on port {port}")
        return f"redis://127.0.0.1:{port}/0"

    def start_redis_cluster(
        self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000
    ) -> list[str]:
        """A Redis Cluster of `masters` masters with `replicas` replicas each, on free ports,
        from the local redis-server and redis-cli: its nodes as "host:port", masters first.

        Each node is the process `redis-node-<port>`; `restart_redis_node` brings a killed one
        back, and it rejoins (as a replica of whoever took its slots over). Append-only files
        on, as a production cluster would run."""
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            raise RuntimeError(
                "redis-server and redis-cli are needed for a local cluster "
                "(Debian: apt-get install redis-server redis-tools)"
            )
        nodes = [f"127.0.0.1:{cluster_port()}" for _ in range(masters * (1 + replicas))]
        for node in nodes:
            port = int(node.rpartition(":")[2])
            data = self.workdir / "redis-cluster" / str(port)
            data.mkdir(parents=True, exist_ok=True)
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            argv += ["--cluster-node-timeout", str(node_timeout_ms)]
            argv += ["--appendonly", "yes", "--save", ""]
            self._node_argv[node] = argv
            self.spawn(f"redis-node-{port}", argv)
        for node in nodes:
            port = int(node.rpartition(":")[2])
            wait_for(lambda port=port: redis_answers(port), 15, f"redis-server on {port}")  # type: ignore[misc]
        create = [cli, "--cluster", "create", *nodes, "--cluster-replicas", str(replicas)]
        subprocess.run([*create, "--cluster-yes"], check=True, capture_output=True, timeout=60)
        wait_for(lambda: all(cluster_ok(n) for n in nodes), 30, "the cluster's state ok")
        # "ok" comes before the replicas' first sync: a WAIT for a replica would fail till then.
        masters_synced = lambda: all(replicas_online(n) >= replicas for n in nodes[:masters])  # noqa: E731
        wait_for(masters_synced, 60, "every master's replicas in sync")
        return nodes

    def restart_redis_node(self, node: str) -> None:
        """Start a node of `start_redis_cluster` again, after it was killed."""
        port = int(node.rpartition(":")[2])
        self.spawn(f"redis-node-{port}", self._node_argv[node])
        wait_for(lambda: redis_answers(port), 15, f"redis-server on {port}")

    def start_s3(self, bucket: str = S3_BUCKET) -> dict[str, str]:
        """A local S3 API (moto's standalone server) on a free port, with `bucket` created; the
        AWS variables that point pyarrow, boto3 and MLflow at it (docs/storage.md)."""
        port = free_port()
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        self.spawn("s3", argv)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_ok(f"{url}/moto-api/"), 60, f"the S3 API (log: {self.log('s3')})")
        env = {
            # moto takes any credentials; these are its documented placeholders.
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": url,
            # MLflow's S3 artifact store reads its own variable before boto3's.
            "MLFLOW_S3_ENDPOINT_URL": url,
        }
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )
        client.create_bucket(Bucket=bucket)
        return env

    def start_mlflow(
        self,
        backend_uri: str | None = None,
        artifacts: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """`mlflow server` on a free port; the backend store is `backend_uri`, or SQLite in
        `workdir/mlflow`; artifacts go to `artifacts` (an `s3://` URI, say, reached with the
        variables in `env`), or `workdir/mlflow/artifacts`."""
        port = free_port()
        data = self.workdir / "mlflow"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend_uri or f"sqlite:///{data / 'mlflow.db'}",
            "--artifacts-destination",
            artifacts or str(data / "artifacts"),
            "--workers",
            "1",
        ]
        # MLflow 3's job runner (seven huey consumers) costs 0.5-0.8 cores of a 2-core machine
        # while idle; streamops uses none of its jobs.
        own = {**os.environ, **(env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.spawn("mlflow", argv, env=own)
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: http_ok(f"{url}/health"),
            120,
            f"mlflow server on port {port} (log: {self.log('mlflow')})",
        )
        return url

    def start_service(self, name: str, command: str, env: dict[str, str]) -> None:
        """Run `streamops COMMAND` as a process of its own."""
        argv = [sys.executable, "-m", "streamops.cli", command]
        self.spawn(name, argv, env={**os.environ, **env})

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = self.log(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.processes[name] = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.processes.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            proc = self.processes.pop(name)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@dataclass(frozen=True)
class Running:
    """What `bring_up` started, and the environment that points a client at it."""

    redis_url: str
    mlflow_url: str
    env: dict[str, str]
    gateway_url: str | None = None
    # process name → its Prometheus endpoint
    metrics: dict[str, str] = field(default_factory=dict)
    # variable → where its value came from (UpSettings.origin), for `up` to print
    origin: dict[str, str] = field(default_factory=dict)


def prometheus_targets(running: Running) -> dict[str, list[dict[str, Any]]]:
    """file_sd target groups by scrape job (the service), one group per process. `instance` is
    the process name (`predictor`, `predictor-2`), not the address: the ports change at every
    start, the names do not, so graphs and alerts keep one series per replica across restarts."""
    endpoints = dict(running.metrics)
    if running.gateway_url is not None:
        endpoints["gateway"] = f"{running.gateway_url}/metrics"
    jobs: dict[str, list[dict[str, Any]]] = {}
    for name, url in endpoints.items():
        service = re.sub(r"-\d+$", "", name)  # predictor-2 is a replica of predictor
        group = {"targets": [urlsplit(url).netloc], "labels": {"instance": name}}
        jobs.setdefault(service, []).append(group)
    return jobs


def write_prometheus_targets(running: Running, directory: Path) -> list[Path]:
    """One file_sd file per job in `directory` (`<job>.json`, what deploy/prometheus/local.yml
    reads), each replaced in one rename so Prometheus never reads half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for job, groups in prometheus_targets(running).items():
        path = directory / f"{job}.json"
        partial = directory / f".{job}.json.partial"
        partial.write_text(json.dumps(groups, indent=2) + "\n")
        partial.replace(path)
        written.append(path)
    return written


def gateway_port() -> int:
    """8000 when it is free (what the README shows), else any free port."""
    with contextlib.closing(socket.socket()) as probe:
        try:
            probe.bind(("127.0.0.1", 8000))
        except OSError:
            return free_port()
    return 8000


FROM_ENVIRONMENT = "from the environment"
FROM_UP = "chosen by up"
MERGED = "yours, then up's"
# The directories a file may be read from: the user's first (their files shadow the sample's
# names), then up's own (the datasets, the inbox), so a relative name in up's inbox still works.
ROOTS = ("STREAMOPS_INGESTOR_DATA_ROOTS", "STREAMOPS_PREDICTOR_SCORE_ROOTS")


@dataclass(frozen=True)
class UpSettings:
    """The settings `up` gives every service, and where each came from."""

    env: dict[str, str]
    origin: dict[str, str]

    @property
    def inbox(self) -> Path:
        return Path(self.env["STREAMOPS_GATEWAY_INBOX"])

    @property
    def port(self) -> int:
        return int(self.env["STREAMOPS_GATEWAY_PORT"])


def up_settings(
    workdir: Path,
    environ: Mapping[str, str],
    datasets_dir: Path,
    pick_port: Callable[[], int] = gateway_port,
) -> UpSettings:
    """What `up` sets for the services: a value exported before `up` wins; the file roots the
    user exported are kept, and up's own are added after them."""
    from shared.errors import ConfigError
    from shared.settings import BUNDLED_DATASETS, split_list

    env: dict[str, str] = {}
    origin: dict[str, str] = {}
    defaults: dict[str, Callable[[], str]] = {
        "STREAMOPS_FEATURE_STORE_ROOT": lambda: str(workdir / "feature-store"),
        "STREAMOPS_GATEWAY_INBOX": lambda: str(workdir / "inbox"),
        "STREAMOPS_GATEWAY_PORT": lambda: str(pick_port()),
    }
    for name, default in defaults.items():
        given = environ.get(name, "").strip()
        env[name], origin[name] = (given, FROM_ENVIRONMENT) if given else (default(), FROM_UP)
    # The gateway would refuse it too, but only after Redis and MLflow had been started.
    port = env["STREAMOPS_GATEWAY_PORT"]
    if not port.isdigit():
        raise ConfigError(f"STREAMOPS_GATEWAY_PORT must be a port number, got {port!r}")
    inbox = Path(env["STREAMOPS_GATEWAY_INBOX"])
    # workdir/inbox too when the user moved the inbox: the demo writes its files there.
    own = [datasets_dir, BUNDLED_DATASETS, inbox, workdir / "inbox"]
    for name in ROOTS:
        exported = [Path(p) for p in split_list(environ.get(name, ""))]
        roots = _unique([*exported, *own])
        # JSON: a directory name may hold a comma.
        env[name] = json.dumps([str(root) for root in roots], separators=(",", ":"))
        origin[name] = MERGED if exported else FROM_UP
    return UpSettings(env, origin)


def _unique(paths: list[Path]) -> list[Path]:
    """Absolute, in order, each once (the services resolve them the same way)."""
    seen: dict[Path, None] = {}
    for path in paths:
        seen.setdefault(path.expanduser().resolve(), None)
    return list(seen)


def _server_url(environ: Mapping[str, str], names: tuple[str, str]) -> str | None:
    """The server the user named, under streamops' name or the one every tool knows."""
    return environ.get(names[0]) or environ.get(names[1]) or None


def bring_up(
    stack: Stack,
    services: tuple[str, ...],
    *,
    timeout: float = 120.0,
    environ: Mapping[str, str] | None = None,
    redis_cluster: bool = False,
    object_store: bool = False,
) -> Running:
    """Redis and MLflow (unless the environment names them) and `services` as processes, each
    waited for until it is up: a heartbeat for the stream services, `/healthz` for the
    gateway. A service named twice runs twice (`predictor-2` is the second replica's log).
    Settings exported before (`environ`, default the process's) win over up's (up_settings).
    `redis_cluster`: a local Redis Cluster (3 masters, 3 replicas) rather than one Redis, unless
    the environment names a Redis. `object_store`: a local S3 API holding the feature store's
    versions, batch scores and MLflow's artifacts (unless the environment names a feature-store
    URI: then that store, reached with the environment's AWS variables)."""
    from shared.broker import sync_redis_client
    from shared.settings import CommonSettings

    environ = os.environ if environ is None else environ
    workdir = stack.workdir
    # Before any server starts: a bad setting stops `up` at once.
    chosen = up_settings(workdir, environ, CommonSettings().datasets_dir)
    origin: dict[str, str] = {}
    url, nodes = _redis(stack, environ, redis_cluster, origin)
    s3: dict[str, str] = {}
    if object_store and not environ.get("STREAMOPS_FEATURE_STORE_URI"):
        s3 = stack.start_s3()
        s3["STREAMOPS_FEATURE_STORE_URI"] = f"s3://{S3_BUCKET}/feature-store"
        origin["STREAMOPS_FEATURE_STORE_URI"] = FROM_UP
    names = ("STREAMOPS_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI")
    mlflow_url = _server_url(environ, names)
    origin["STREAMOPS_MLFLOW_TRACKING_URI"] = FROM_ENVIRONMENT if mlflow_url else FROM_UP
    artifacts = f"s3://{S3_BUCKET}/mlflow" if s3 else None
    mlflow_url = mlflow_url or stack.start_mlflow(artifacts=artifacts, env=s3)
    for inbox in (chosen.inbox, workdir / "inbox"):
        inbox.mkdir(parents=True, exist_ok=True)
    port = chosen.port
    env = {
        "STREAMOPS_REDIS_URL": url,
        "STREAMOPS_MLFLOW_TRACKING_URI": mlflow_url,
        **chosen.env,
        **s3,
    }
    if nodes:
        env["STREAMOPS_REDIS_CLUSTER_NODES"] = nodes
    origin.update(chosen.origin)
    client = sync_redis_client(CommonSettings(redis_url=url, redis_cluster_nodes=nodes))
    gateway_url = None
    metrics: dict[str, str] = {}
    for service in services:
        name = service
        count = 1
        while name in stack.processes:
            count += 1
            name = f"{service}-{count}"
        before = set(client.scan_iter(match=heartbeat_key(service, "*")))
        own = dict(env)
        if service != "gateway":
            port_of_metrics = free_port()
            own["STREAMOPS_METRICS_PORT"] = str(port_of_metrics)
            metrics[name] = f"http://127.0.0.1:{port_of_metrics}/metrics"
        stack.start_service(name, service, own)
        if service == "gateway":
            gateway_url = f"http://127.0.0.1:{port}"
            health = f"{gateway_url}/healthz"
            what = f"the gateway (log: {stack.log(name)})"
            wait_for(lambda url=health: http_ok(url), timeout, what)  # type: ignore[misc]
            continue

        def beating(kind: str = service, known: set[Any] = before) -> bool:
            return bool(set(client.scan_iter(match=heartbeat_key(kind, "*"))) - known)

        wait_for(beating, timeout, f"the {name} (log: {stack.log(name)})")
    client.close()
    return Running(url, mlflow_url, env, gateway_url, metrics, origin)


def _redis(
    stack: Stack, environ: Mapping[str, str], cluster: bool, origin: dict[str, str]
) -> tuple[str, str]:
    """The Redis URL and cluster nodes (maybe none) the services use: the environment's, or
    servers started here."""
    url = _server_url(environ, ("STREAMOPS_REDIS_URL", "REDIS_URL"))
    origin["STREAMOPS_REDIS_URL"] = FROM_ENVIRONMENT if url else FROM_UP
    nodes = environ.get("STREAMOPS_REDIS_CLUSTER_NODES", "")
    if url is None and cluster:
        nodes = ",".join(stack.start_redis_cluster())
        url = f"redis://{nodes.split(',')[0]}/0"
        origin["STREAMOPS_REDIS_CLUSTER_NODES"] = FROM_UP
    return url or stack.start_redis(), nodes


@contextlib.contextmanager
def local_stack(workdir: Path) -> Iterator[Stack]:
    stack = Stack(workdir)
    try:
        yield stack
    finally:
        stack.stop()
