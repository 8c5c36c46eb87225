"""A registry of several models in memory, each version with the flavors its MLmodel would
list: loading applies the real trust decision (shared.model_loading.decide) before handing the
model out, as MlflowRegistry does, with no MLflow server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shared.model_loading import LoadedModel, LoadPolicy, decide
from shared.registry import Canary, Challenger, RegisteredVersion, TrainingRecord

SKOPS_SKLEARN: dict[str, dict[str, Any]] = {
    "sklearn": {"serialization_format": "skops"},
    "python_function": {"loader_module": "mlflow.sklearn"},
}
CLOUDPICKLE_PYFUNC: dict[str, dict[str, Any]] = {
    "python_function": {"loader_module": "mlflow.pyfunc.model", "python_model": "x.pkl"}
}


@dataclass(frozen=True)
class Entry:
    """One registered version: its model (or the exception loading raises), its signature
    and its MLmodel's flavors."""

    model: Any
    signature: Any = None
    flavors: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(SKOPS_SKLEARN))
    example: Any = None


@dataclass
class Catalog:
    entries: dict[tuple[str, int], Entry] = field(default_factory=dict)
    production: dict[str, int] = field(default_factory=dict)
    loads: list[tuple[str, int]] = field(default_factory=list)

    def add(self, name: str, version: int, entry: Entry, production: bool = True) -> None:
        self.entries[(name, version)] = entry
        if production:
            self.production[name] = version

    # --- what the predictor uses ---------------------------------------------------------------

    def production_versions(self) -> dict[str, int]:
        return dict(self.production)

    def challengers(self) -> dict[str, Challenger]:
        return {}

    def canaries(self) -> dict[str, Canary]:
        return {}

    def load_model(self, name: str, version: int, policy: LoadPolicy) -> LoadedModel:
        entry = self.entries[(name, version)]
        decision = decide(entry.flavors, policy)  # before anything is "deserialised"
        self.loads.append((name, version))
        if isinstance(entry.model, Exception):
            raise entry.model
        return LoadedModel(
            decision.flavor, entry.signature, entry.model, decision.pickled, entry.example
        )

    def load(self, name: str, version: int) -> Any:
        return self.entries[(name, version)].model

    def drift_reference(self, name: str, version: int) -> dict[str, Any] | None:
        return None

    def alias(self, name: str, alias: str) -> int | None:
        return self.production.get(name) if alias == "production" else None

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.production[name] = version

    # --- the rest of the Registry port (unused here) -------------------------------------------

    def find(self, name: str, tag: str, value: str) -> RegisteredVersion | None:
        return None

    def log(self, record: TrainingRecord) -> RegisteredVersion:
        raise NotImplementedError

    def history(self, name: str) -> list[int]:
        return []

    def set_history(self, name: str, versions: list[int]) -> None:
        return None

    def versions(self, name: str) -> list[RegisteredVersion]:
        found = sorted(v for n, v in self.entries if n == name)
        return [RegisteredVersion(name, v, f"run-{v}") for v in found]

    def aliases(self, name: str) -> dict[str, int]:
        found = self.production.get(name)
        return {} if found is None else {"production": found}

    def model_names(self) -> list[str]:
        return sorted({n for n, _ in self.entries})


def ab_frame(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    """Two float features, as a model registered elsewhere would take them."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows)})


def ab_signature(outputs: Any = None) -> Any:
    """The MLflow signature of a model over `a` and `b` (float64 columns)."""
    from mlflow.models import infer_signature

    frame = ab_frame(5)
    return infer_signature(frame, outputs if outputs is not None else frame["a"].to_numpy())


class Answers:
    """A model whose predict returns `make(frame)`: any shape a pyfunc may answer with."""

    def __init__(self, make: Any) -> None:
        self.make = make

    def predict(self, frame: pd.DataFrame) -> Any:
        return self.make(frame)
