"""`streamops ingest` as a user runs it: against a running ingestor, and in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.settings import BUNDLED_DATASETS
from streamops.stack import Stack, local_stack
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def _streamops(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamops.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


@pytest.fixture
def env(tmp_path: Path, redis_db: str) -> dict[str, str]:
    return {
        "STREAMOPS_REDIS_URL": redis_db,
        "STREAMOPS_FEATURE_STORE_ROOT": str(tmp_path / "store"),
        "STREAMOPS_INGESTOR_DATA_ROOTS": str(BUNDLED_DATASETS),
        "COLUMNS": "200",
    }


@pytest.fixture
def ingestor(tmp_path: Path, env: dict[str, str]) -> Iterator[Stack]:
    with local_stack(tmp_path) as stack:
        stack.start_service("ingestor", "ingestor", env)
        client = redis.Redis.from_url(env["STREAMOPS_REDIS_URL"])
        wait_until(
            lambda: client.keys("streamops:heartbeat:{ingestor}:*"),
            timeout=60,
            what=f"the ingestor alive (log: {stack.log('ingestor')})",
        )
        yield stack


def test_ingest_publishes_and_reports_the_outcome(ingestor: Stack, env: dict[str, str]) -> None:
    sample = str(BUNDLED_DATASETS / "churn" / "churn.csv")
    first = _streamops("ingest", "churn", sample, env=env)
    assert first.returncode == 0, first.stderr
    assert "churn v1: new version; 4992 rows, 8 quarantined" in first.stdout
    again = _streamops("ingest", "churn", sample, env=env)
    assert "already stored (same content)" in again.stdout
    versions = _streamops("versions", "churn", env=env)
    assert versions.returncode == 0
    assert "4992" in versions.stdout
    quarantine = _streamops("quarantine", "churn", env=env)
    assert "platinum" in quarantine.stdout


def test_a_rejection_is_reported_with_a_nonzero_exit(ingestor: Stack, env: dict[str, str]) -> None:
    result = _streamops("ingest", "churn", "/etc/passwd", env=env)
    assert result.returncode == 2
    assert "outside the data roots" in result.stderr


def test_local_ingest_needs_no_service(env: dict[str, str], tmp_path: Path) -> None:
    result = _streamops("ingest", "--local", "churn", "churn/churn.csv", env=env)
    assert result.returncode == 0, result.stderr
    assert "churn v1: new version" in result.stdout
    assert (tmp_path / "store" / "churn" / "versions" / "version=1" / "data.parquet").exists()
