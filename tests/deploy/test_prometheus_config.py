"""deploy/prometheus: both configs and the rules pass promtool, the rules' unit tests pass, every
metric a rule reads is one the services export, and local.yml reads what `streamops up` writes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import REPO_ROOT
from streamops.cli import _parser
from streamops.stack import Running, write_prometheus_targets
from tests.support.exported_metrics import SCRAPE_SERIES, exported_series

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
CONFIGS = ("prometheus.yml", "local.yml")
JOBS = ["gateway", "ingestor", "predictor", "trainer"]
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
# The services' own series names (as a rule expression spells them).
OWN_METRIC = re.compile(r"\b(?:streamops|faststream)_[A-Za-z0-9_]+")
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed: install Debian's `prometheus` package "
            "(apt-get install prometheus), which brings promtool",
            pytrace=False,
        )
    return found


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules() -> list[dict[str, Any]]:
    assert RULE_FILES, f"no rule files in {PROMETHEUS / 'rules'}"
    return [rule for f in RULE_FILES for group in _yaml(f)["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("config", CONFIGS)
def test_config_passes_promtool(promtool: str, config: str) -> None:
    checked = _run(promtool, "check", "config", str(PROMETHEUS / config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout, checked.stdout


def test_rules_pass_promtool(promtool: str) -> None:
    checked = _run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    assert tests, f"no promtool tests in {PROMETHEUS / 'tests'}"
    ran = _run(promtool, "test", "rules", *map(str, tests))
    assert ran.returncode == 0, ran.stdout + ran.stderr


@pytest.mark.parametrize("config", CONFIGS)
def test_the_jobs_are_the_four_services(config: str) -> None:
    loaded = _yaml(PROMETHEUS / config)
    assert sorted(job["job_name"] for job in loaded["scrape_configs"]) == JOBS
    assert loaded["rule_files"] == ["rules/*.yml"]


def test_every_metric_a_rule_reads_is_exported() -> None:
    exported = exported_series()
    for rule in _rules():
        name = rule.get("alert") or rule.get("record")
        unknown = set(OWN_METRIC.findall(rule["expr"])) - exported
        assert not unknown, f"{name} reads series no service exports: {sorted(unknown)}"
        # Label values left out: `job="up"` names no series.
        named = set(IDENTIFIER.findall(STRING.sub('""', rule["expr"]))) & (exported | SCRAPE_SERIES)
        assert named, f"{name} names no exported series: {rule['expr']}"


def test_every_alert_has_a_severity_and_says_what_happened() -> None:
    alerts = [rule for rule in _rules() if "alert" in rule]
    assert len(alerts) >= 8
    for alert in alerts:
        assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]
        assert {"summary", "description"} <= set(alert["annotations"]), alert["alert"]


def test_local_config_reads_the_targets_streamops_up_writes(tmp_path: Path) -> None:
    running = Running(
        redis_url="redis://127.0.0.1:1/0",
        mlflow_url="http://127.0.0.1:2",
        env={},
        gateway_url="http://127.0.0.1:8000",
        metrics={
            "ingestor": "http://127.0.0.1:9101/metrics",
            "trainer": "http://127.0.0.1:9102/metrics",
            "predictor": "http://127.0.0.1:9103/metrics",
            "predictor-2": "http://127.0.0.1:9104/metrics",
        },
    )
    # `up` writes into <workdir>/prometheus; local.yml resolves its paths from its directory.
    workdir = _parser().parse_args(["up"]).workdir
    written = write_prometheus_targets(running, tmp_path / workdir / "prometheus")
    read = {
        job["job_name"]: [
            (PROMETHEUS / f).resolve() for c in job["file_sd_configs"] for f in c["files"]
        ]
        for job in _yaml(PROMETHEUS / "local.yml")["scrape_configs"]
    }
    assert {job: [REPO_ROOT / workdir / "prometheus" / f"{job}.json"] for job in JOBS} == read
    assert sorted(path.name for path in written) == [f"{job}.json" for job in JOBS]
    predictor = json.loads((tmp_path / workdir / "prometheus" / "predictor.json").read_text())
    assert predictor == [
        {"targets": ["127.0.0.1:9103"], "labels": {"instance": "predictor"}},
        {"targets": ["127.0.0.1:9104"], "labels": {"instance": "predictor-2"}},
    ]
    gateway = json.loads((tmp_path / workdir / "prometheus" / "gateway.json").read_text())
    assert gateway == [{"targets": ["127.0.0.1:8000"], "labels": {"instance": "gateway"}}]
