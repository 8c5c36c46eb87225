"""Static checks of deploy/k8s with no cluster: each overlay rendered by kustomize (the kubectl
that scripts/system-deps.sh unpacks into .tools/), every resource valid against the OpenAPI
schemas of a current Kubernetes release (kubernetes-validate), and the manifests agreeing with
the code: variables a settings class reads, the image and commands the Dockerfile and CLI
have, probes on routes and ports that exist, KEDA triggers on the streams and group that the
predictors read."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as k8s

from gateway.api.health import router as health
from predictor import online, scoring_app
from shared.events import PredictionRequested, ScoreChunkRequested
from shared.settings import REPO_ROOT
from streamops.cli import _parser
from tests.deploy.test_compose import SETTINGS_OF, env_example_variables, known, services

K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
SERVICES = ("ingestor", "trainer", "predictor", "gateway")
KEDA = "keda.sh/v1alpha1"


def kubectl() -> str:
    tools = Path(os.environ.get("SYSTEM_DEPS_TOOLS", REPO_ROOT / ".tools")) / "kubectl"
    if tools.exists():
        return str(tools)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("no kubectl to render deploy/k8s: run `make deps-test`", pytrace=False)
    return found


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def of_kind(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in rendered(overlay) if r["kind"] == kind}


def containers(overlay: str) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(deployment name, pod spec, container) of every Deployment."""
    for name, deployment in of_kind(overlay, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            yield name, pod, container


def test_there_are_overlays_for_one_node_and_for_production() -> None:
    assert set(OVERLAYS) == {"local", "production"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_is_valid_for_a_current_kubernetes(overlay: str) -> None:
    version = k8s.latest_version()
    assert tuple(int(x) for x in version.split(".")[:2]) >= (1, 33)
    core = [r for r in rendered(overlay) if r["apiVersion"] != KEDA]
    assert len(core) >= 10
    for resource in core:
        # strict: a field the schema does not know (a typo, a misplaced key) is an error.
        k8s.validate(resource, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_four_services_run_their_own_streamops_command(overlay: str) -> None:
    actions = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    subcommands = set(actions[0].choices)
    deployments = of_kind(overlay, "Deployment")
    assert set(deployments) == {f"streamops-{s}" for s in SERVICES}
    images = {services()["gateway"]["image"].partition(":")[0]}  # what compose builds
    for name, _, container in containers(overlay):
        command = container["command"]
        assert command[0] == "streamops"
        assert command[1] in subcommands
        assert name == f"streamops-{command[1]}"
        image = container["image"].rpartition(":")[0]
        expected = "registry.example.com/streamops" if overlay == "production" else "streamops"
        assert image == expected or image in images, container["image"]


def environment(overlay: str, name: str, container: dict[str, Any]) -> dict[str, str]:
    """What the container sees: its ConfigMaps, then its own env (a Secret's value: 'secret')."""
    maps = of_kind(overlay, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= maps[source["configMapRef"]["name"]]["data"]
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "secret")
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_is_read_by_a_settings_class(overlay: str) -> None:
    for name, _, container in containers(overlay):
        unknown = [v for v in environment(overlay, name, container) if not known(v)]
        assert not unknown, f"{name}: no settings class reads {unknown}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_gets_a_valid_configuration(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, _, container in containers(overlay):
        with monkeypatch.context() as env:
            for variable in list(os.environ):
                if variable.upper().startswith("STREAMOPS_"):
                    env.delenv(variable)
            for variable, value in environment(overlay, name, container).items():
                env.setenv(variable, value)
            service = name.removeprefix("streamops-")
            settings = SETTINGS_OF[service]()  # a bad value raises, as the service would
            assert settings.common.feature_store_root == Path("/data/feature-store")
            if overlay == "production":
                assert settings.common.redis_cluster_nodes, "production runs on a cluster"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_routes_and_ports_that_exist(overlay: str) -> None:
    gateway_routes = {route.path for route in health.routes}  # type: ignore[attr-defined]
    for name, _, container in containers(overlay):
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = environment(overlay, name, container)
        probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
        for probe in probes:
            get = probe["httpGet"]
            port = ports[get["port"]]
            if name == "streamops-gateway":
                assert port == int(env["STREAMOPS_GATEWAY_PORT"])
                assert get["path"] in gateway_routes
            else:
                assert port == int(env["STREAMOPS_METRICS_PORT"])
                assert get["path"] == "/metrics"
        if name == "streamops-gateway":
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_a_user_on_a_read_only_root_with_limits(overlay: str) -> None:
    for name, pod, container in containers(overlay):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, f"{name}: nowhere to write temporary files"
        assert environment(overlay, name, container)["HOME"] == "/tmp"
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert "memory" in resources["limits"], name
        claims = {v["name"]: v for v in pod["volumes"]}
        for mount in container["volumeMounts"]:
            claim = claims[mount["name"]].get("persistentVolumeClaim")
            if claim is not None:
                assert claim["claimName"] in of_kind(overlay, "PersistentVolumeClaim")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_is_a_service_kept_through_drains_and_scaled_on_cpu(overlay: str) -> None:
    gateway = of_kind(overlay, "Deployment")["streamops-gateway"]
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    service = of_kind(overlay, "Service")["streamops-gateway"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in gateway["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    deployments = of_kind(overlay, "Deployment")
    for budget in of_kind(overlay, "PodDisruptionBudget").values():
        selected = [
            d
            for d in deployments.values()
            if budget["spec"]["selector"]["matchLabels"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, budget["metadata"]["name"]
    (hpa,) = of_kind(overlay, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "streamops-gateway"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_predictors_scale_on_the_lag_of_the_streams_they_read() -> None:
    keda = [r for r in rendered("production") if r["apiVersion"] == KEDA]
    scalers = {r["metadata"]["name"]: r for r in keda if r["kind"] == "ScaledObject"}
    auths = {r["metadata"]["name"]: r for r in keda if r["kind"] == "TriggerAuthentication"}
    (scaler,) = scalers.values()
    assert scaler["spec"]["scaleTargetRef"]["name"] == "streamops-predictor"
    assert scaler["spec"]["scaleTargetRef"]["name"] in of_kind("production", "Deployment")
    config = of_kind("production", "ConfigMap")["streamops-config"]["data"]
    nodes = set(config["STREAMOPS_REDIS_CLUSTER_NODES"].split(","))
    streams = set()
    for trigger in scaler["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "redis-cluster-streams"  # the overlay's Redis is a cluster
        assert {a.strip() for a in meta["addresses"].split(",")} == nodes
        assert meta["consumerGroup"] == online.GROUP == scoring_app.GROUP
        assert int(meta["lagCount"]) > 0
        streams.add(meta["stream"])
        (secret,) = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
        assert (secret["name"], secret["key"]) == ("streamops-secrets", "redis-password")
    assert streams == {PredictionRequested.stream, ScoreChunkRequested.stream}
    # The local overlay does without KEDA: a cluster without it refuses its kinds.
    assert not [r for r in rendered("local") if r["apiVersion"] == KEDA]


def test_the_secret_keys_the_pods_use_are_the_documented_ones() -> None:
    keys = set()
    for _, _, container in containers("production"):
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "streamops-secrets"
                keys.add(ref["key"])
    assert keys == {"api-key", "redis-password"}
    docs = (REPO_ROOT / "docs" / "kubernetes.md").read_text()
    assert all(f"--from-literal={key}=" in docs for key in keys)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_config_map_holds_the_variables_of_the_env_example(overlay: str) -> None:
    # One set of names for compose and Kubernetes: deploy/.env.example documents them all.
    data = of_kind(overlay, "ConfigMap")["streamops-config"]["data"]
    missing = set(data) - env_example_variables()
    assert not missing, f"not in deploy/.env.example: {missing}"
