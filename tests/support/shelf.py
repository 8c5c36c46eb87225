"""A model registry in memory, and real pipelines to put in it (for tests without MLflow)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from shared.model_loading import LoadedModel, LoadPolicy
from shared.registry import Canary, Challenger, RegisteredVersion, TrainingRecord
from trainer.training import fit


@dataclass
class ModelShelf:
    """A registry of one model (`name`) in memory: versions, a production alias, and broken
    versions (an exception in place of the model is raised by load)."""

    models: dict[int, Any] = field(default_factory=dict)
    production: int | None = None
    loads: list[int] = field(default_factory=list)
    production_history: list[int] = field(default_factory=list)
    references: dict[int, dict[str, Any]] = field(default_factory=dict)
    name: str = "churn"
    challenger: Challenger | None = None
    canary: Canary | None = None
    version_tags: dict[int, dict[str, str]] = field(default_factory=dict)

    def find(self, name: str, tag: str, value: str) -> RegisteredVersion | None:
        return None

    def log(self, record: TrainingRecord) -> RegisteredVersion:
        raise NotImplementedError

    def alias(self, name: str, alias: str) -> int | None:
        return self.aliases(name).get(alias)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.production = version

    def load(self, name: str, version: int) -> Any:
        self.loads.append(version)
        model = self.models[version]
        if isinstance(model, Exception):
            raise model
        return model

    def load_model(self, name: str, version: int, policy: LoadPolicy) -> LoadedModel:
        """As a scikit-learn model with no signature (the shelf's models have dataset specs)."""
        lineage = {
            "streamops.dataset": "churn",
            "streamops.dataset_version": str(version),
            "streamops.content_hash": f"hash-{version}",
        }
        model = self.load(name, version)
        return LoadedModel(
            "sklearn", None, model, pickled=False, run_id=f"run-{version}", tags=lineage
        )

    def production_versions(self) -> dict[str, int]:
        return {} if self.production is None else {self.name: self.production}

    def challengers(self) -> dict[str, Challenger]:
        return {} if self.challenger is None else {self.name: self.challenger}

    def set_shadow(self, name: str, version: int, sample: float) -> None:
        self.challenger = Challenger(version, sample)

    def end_shadow(self, name: str) -> None:
        self.challenger = None

    def tag_version(self, name: str, version: int, key: str, value: str) -> None:
        self.version_tags.setdefault(version, {})[key] = value

    def canaries(self) -> dict[str, Canary]:
        return {} if self.canary is None else {self.name: self.canary}

    def set_canary(self, name: str, version: int, percent: float) -> None:
        self.canary = Canary(version, percent)

    def end_canary(self, name: str) -> None:
        self.canary = None

    def drift_reference(self, name: str, version: int) -> dict[str, Any] | None:
        return self.references.get(version)

    def history(self, name: str) -> list[int]:
        return list(self.production_history)

    def set_history(self, name: str, versions: list[int]) -> None:
        self.production_history = list(versions)

    def versions(self, name: str) -> list[RegisteredVersion]:
        if name != self.name:
            return []
        tags = self.version_tags
        return [
            RegisteredVersion(name, v, f"run-{v}", dict(tags.get(v, {})), {"roc_auc": 0.8})
            for v in self.models
        ]

    def aliases(self, name: str) -> dict[str, int]:
        found = {} if self.production is None else {"production": self.production}
        if self.challenger is not None:
            found["challenger"] = self.challenger.version
        if self.canary is not None:
            found["canary"] = self.canary.version
        return found

    def model_names(self) -> list[str]:
        return [self.name]


def two_pipelines() -> tuple[Any, Any]:
    """Two real churn pipelines trained on different orders of the same rows."""
    from shared.datasets import load_spec
    from shared.settings import BUNDLED_DATASETS

    spec = load_spec(BUNDLED_DATASETS, "churn")
    frame = churn_frame(600, seed=4)
    return (fit(spec, frame).pipeline, fit(spec, frame.sample(frac=1.0, random_state=3)).pipeline)


def churn_frame(rows: int, seed: int) -> pd.DataFrame:
    """Valid churn rows, typed as the feature store holds them (two_pipelines trains on
    churn_frame(600, seed=4))."""
    from tests.support.data import churn_rows

    frame = pd.DataFrame(churn_rows(rows, seed=seed))
    frame = frame.astype(
        {
            "tenure_months": int,
            "monthly_charges": float,
            "support_calls": int,
            "usage_gb": float,
            "churned": int,
        }
    )
    frame["satisfaction"] = pd.to_numeric(frame["satisfaction"].replace("", None))
    frame["autopay"] = frame["autopay"] == "true"
    return frame
