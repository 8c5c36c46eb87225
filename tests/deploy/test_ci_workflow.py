"""The GitHub workflow and .ci/run run the same checks: every `make` target .ci/run runs is run
by the workflow too, every target either runs exists, and .ci/run runs nothing but make
targets (the make targets install what they need, for CI as for a new user)."""

from __future__ import annotations

import re
import shlex
from functools import cache
from typing import Any

import yaml

from shared.settings import REPO_ROOT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yml"
CI_RUN = REPO_ROOT / ".ci" / "run"
MAKEFILE = REPO_ROOT / "Makefile"


@cache
def jobs() -> dict[str, dict[str, Any]]:
    # (PyYAML reads the workflow's `on:` key as True; only the jobs matter here.)
    found: dict[str, dict[str, Any]] = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    return found


def commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script (enough of the shell for these scripts): comment
    lines dropped, continuation lines joined, quotes respected, split at newlines, ;, & and |."""
    text = "\n".join(line for line in script.splitlines() if not line.strip().startswith("#"))
    separators = ";&|\n"
    lexer = shlex.shlex(text.replace("\\\n", " "), posix=True, punctuation_chars=separators)
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    lexer.commenters = ""
    found: list[list[str]] = []
    current: list[str] = []
    for token in lexer:
        if token and set(token) <= set(separators):
            if current:
                found.append(current)
            current = []
        else:
            current.append(token)
    if current:
        found.append(current)
    return found


def make_targets(script: str) -> set[str]:
    targets: set[str] = set()
    for words in commands(script):
        if words[0] == "make":
            targets |= {word for word in words[1:] if not word.startswith("-") and "=" not in word}
    return targets


def workflow_scripts(job: str | None = None) -> str:
    selected = [jobs()[job]] if job else list(jobs().values())
    return "\n".join(step.get("run", "") for j in selected for step in j.get("steps", []))


def test_every_make_target_of_ci_run_is_in_the_workflow() -> None:
    ci_run = make_targets(CI_RUN.read_text())
    assert ci_run, ".ci/run runs no make target?"
    missing = ci_run - make_targets(workflow_scripts())
    assert not missing, f".ci/run runs `make {missing}`; .github/workflows/ci.yml does not"


def test_the_workflow_runs_the_agreed_targets() -> None:
    assert {"lint", "test", "gate", "image"} <= make_targets(workflow_scripts())


def test_every_make_target_run_exists() -> None:
    defined = set(re.findall(r"^([A-Za-z][\w.-]*):", MAKEFILE.read_text(), re.MULTILINE))
    for script in (CI_RUN.read_text(), workflow_scripts()):
        unknown = make_targets(script) - defined
        assert not unknown, f"no such make target: {unknown}"


def test_the_test_job_has_redis() -> None:
    test = jobs()["test"]
    assert "redis" in test["services"]
    assert test["env"]["REDIS_URL"].startswith("redis://redis:")


def test_ci_run_runs_only_make_targets() -> None:
    """What CI runs is what a new user runs: no install step of its own."""
    for words in commands(CI_RUN.read_text()):
        assert words[0] in {"make", "set", "cd"}, f".ci/run runs {' '.join(words)!r}"
    assert "test" in make_targets(CI_RUN.read_text())


def test_make_test_installs_its_system_packages() -> None:
    """`make test` depends on the target that installs the Debian packages the tests need."""
    rules = dict(re.findall(r"^([A-Za-z][\w.-]*):(.*)$", MAKEFILE.read_text(), re.MULTILINE))
    assert "deps-test" in rules["test"].split()
    assert "deps" in rules["demo"].split()
    script = (REPO_ROOT / "scripts" / "system-deps.sh").read_text()
    for package in ("redis-server", "prometheus", "chromium"):
        assert f" {package}" in script, f"scripts/system-deps.sh does not install {package}"


def test_the_image_job_checks_the_compose_file_and_builds() -> None:
    image = [" ".join(words) for words in commands(workflow_scripts("image"))]
    assert "docker compose -f deploy/compose.yml config --quiet" in image
    assert "make image" in image


def test_every_job_has_a_time_limit() -> None:
    for name, job in jobs().items():
        assert job.get("timeout-minutes"), f"job {name} could run for GitHub's six hours"
