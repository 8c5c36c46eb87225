"""Test data: rows of the bundled churn dataset, made with its own generator, and its spec
under a model name of a test's own."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from shared.settings import BUNDLED_DATASETS


def write_churn_spec(datasets: Path, prefix: str, **sections: dict[str, Any]) -> str:
    """The bundled churn spec in `datasets/churn/spec.yaml`, its model named `prefix-<8 hex>`
    (the session's MLflow server is shared), each of `sections` merged into the section of
    that name; the model name."""
    spec = yaml.safe_load((BUNDLED_DATASETS / "churn" / "spec.yaml").read_text())
    model = f"{prefix}-{uuid.uuid4().hex[:8]}"
    spec["training"]["model_name"] = model
    for name, values in sections.items():
        spec[name] = {**spec.get(name, {}), **values}
    (datasets / "churn").mkdir(parents=True)
    (datasets / "churn" / "spec.yaml").write_text(yaml.safe_dump(spec))
    return model


def _generator() -> ModuleType:
    path = BUNDLED_DATASETS / "churn" / "generate.py"
    spec = importlib.util.spec_from_file_location("churn_generate", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# One valid customer, for predict requests.
CHURN_ROW = {
    "tenure_months": 12,
    "monthly_charges": 70.5,
    "support_calls": 2,
    "usage_gb": 10.0,
    "satisfaction": 3.5,
    "plan": "basic",
    "autopay": True,
}

_GEN = _generator()
BROKEN: tuple[tuple[int, str, str], ...] = _GEN.BROKEN
COLUMNS: tuple[str, ...] = _GEN.COLUMNS


def churn_rows(rows: int, seed: int = 1) -> list[dict[str, str]]:
    """Valid churn rows (none broken)."""
    out: list[dict[str, str]] = _GEN.generate(rows=rows, seed=seed, broken=False)
    return out


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    import csv

    fields = list(rows[0]) if rows else list(COLUMNS)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path
