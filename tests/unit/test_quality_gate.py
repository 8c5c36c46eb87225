"""The CI quality gate (`python -m streamops.gate`): the bundled sample passes its spec's
thresholds; a threshold no model can reach fails the run with exit status 1 and says why."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.settings import BUNDLED_DATASETS, REPO_ROOT
from streamops import gate as quality


def test_the_bundled_datasets_pass_the_gate() -> None:
    # The real entry point, as `make gate` runs it.
    run = subprocess.run(
        [sys.executable, "-m", "streamops.gate"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    churn = next(line for line in lines if line.startswith("churn:"))
    assert churn.startswith("churn: PASS")
    assert "roc_auc 0." in churn
    assert ">= 0.7" in churn  # the spec's threshold, judged
    assert "8 quarantined" in churn  # the sample went through the ingestor's validation
    # The second bundled dataset trains through its entry point, from datasets/plugins.
    rentals = next(line for line in lines if line.startswith("rentals:"))
    assert rentals.startswith("rentals: PASS")
    assert "roc_auc 0." in rentals
    assert lines[-1] == "gate: 2 of 2 datasets passed"


def _churn_copy(tmp_path: Path, **minimum: float) -> Path:
    """The churn dataset (spec and sample) in a directory of its own, with other minimums."""
    target = tmp_path / "datasets" / "churn"
    target.mkdir(parents=True)
    shutil.copy(BUNDLED_DATASETS / "churn" / "churn.csv", target / "churn.csv")
    spec = yaml.safe_load((BUNDLED_DATASETS / "churn" / "spec.yaml").read_text())
    spec["training"]["gate"]["minimum"] = minimum
    (target / "spec.yaml").write_text(yaml.safe_dump(spec))
    return target.parent


def test_an_impossible_threshold_fails_the_run_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    datasets = _churn_copy(tmp_path, roc_auc=1.01)
    assert quality.main(["--datasets-dir", str(datasets)]) == 1
    out = capsys.readouterr().out
    churn = next(line for line in out.splitlines() if line.startswith("churn:"))
    assert churn.startswith("churn: FAIL")
    assert "< minimum 1.01" in churn
    assert "roc_auc 0." in churn
    assert out.splitlines()[-1] == "gate: 0 of 1 datasets passed"


def test_a_dataset_without_its_sample_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    datasets = _churn_copy(tmp_path, roc_auc=0.5)
    (datasets / "churn" / "churn.csv").unlink()
    assert quality.main(["--datasets-dir", str(datasets)]) == 1
    assert "churn: FAIL" in capsys.readouterr().out


def test_no_trainable_dataset_is_a_failure_not_a_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert quality.main(["--datasets-dir", str(tmp_path)]) == 1
    assert "no dataset with a training section" in capsys.readouterr().err
