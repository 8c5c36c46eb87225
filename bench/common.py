"""What the benchmarks share: the dataset spec of the data they generate.

Each benchmark generates float features and a binary `label`; this writes the spec that
describes them, so the three scripts cannot drift apart in how a spec is laid out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

LABEL = {"name": "label", "type": "int", "allowed": [0, 1]}


def write_spec(
    datasets: Path,
    name: str,
    features: Sequence[str],
    *,
    extra_columns: Sequence[dict[str, Any]] = (),
    timestamp: str | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write `datasets/<name>/spec.yaml`: float `features`, then the target `label`, then
    `extra_columns`; with a training section when `training` is given. Returns its path."""
    spec: dict[str, Any] = {"name": name, "target": LABEL["name"]}
    if timestamp is not None:
        spec["timestamp"] = timestamp
    floats = [{"name": feature, "type": "float"} for feature in features]
    spec["columns"] = [*floats, LABEL, *extra_columns]
    if training is not None:
        spec["training"] = training
    path = datasets / name / "spec.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# Written by a benchmark (bench/common.py).\n{yaml.safe_dump(spec, sort_keys=False)}"
    )
    return path


def forest(params: dict[str, Any], metric: str, **more: Any) -> dict[str, Any]:
    """A training section: a RandomForestClassifier with `params`, compared on `metric`; `more`
    adds keys (model_name, promotion)."""
    return {
        "task": "classification",
        "estimator": {"name": "RandomForestClassifier", "params": params},
        "metric": metric,
        **more,
    }
