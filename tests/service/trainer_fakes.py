"""Hand-written fakes for the trainer's ports: the training locks and where fits run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.events import DataIngested
from shared.feature_store import FeatureStore
from shared.registry import RegisteredVersion, TrainingRecord
from trainer import worker
from trainer.service import Outcome, Plan


@dataclass
class FakeLocks:
    """Locks in a dict, key -> owner; nothing expires."""

    owners: dict[str, str] = field(default_factory=dict)
    renewals: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    ttls: list[int] = field(default_factory=list)

    async def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        self.ttls.append(ttl_ms)
        if key in self.owners:
            return False
        self.owners[key] = owner
        return True

    async def renew(self, key: str, ttl_ms: int) -> None:
        self.ttls.append(ttl_ms)
        self.renewals.append(key)

    async def release(self, key: str) -> None:
        self.owners.pop(key, None)
        self.released.append(key)


@dataclass
class FakeFits:
    """Answers every fit with `answer`: an outcome, None (nothing to train), or an exception to
    raise. `while_fitting`, when given, is awaited inside the fit, as a long fit would be."""

    answer: Outcome | BaseException | None
    while_fitting: Callable[[], Awaitable[object]] | None = None
    plans: list[Plan] = field(default_factory=list)
    started: int = 0
    replaced: int = 0
    closed: bool = False

    async def fit(self, event: DataIngested, plan: Plan) -> Outcome | None:
        self.plans.append(plan)
        if self.while_fitting is not None:
            await self.while_fitting()
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def start(self) -> None:
        self.started += 1

    def replace(self) -> None:
        self.replaced += 1

    def close(self) -> None:
        self.closed = True


@dataclass
class RecordingRegistry:
    """An empty registry that keeps what is logged to it (no MLflow): every training is new,
    there is no production model to beat."""

    records: list[TrainingRecord] = field(default_factory=list)
    aliases_set: dict[str, int] = field(default_factory=dict)

    def find(self, name: str, tag: str, value: str) -> RegisteredVersion | None:
        return None

    def log(self, record: TrainingRecord) -> RegisteredVersion:
        self.records.append(record)
        version = len(self.records)
        return RegisteredVersion(
            record.model_name, version, f"run-{version}", dict(record.tags), dict(record.metrics)
        )

    def alias(self, name: str, alias: str) -> int | None:
        return self.aliases_set.get(alias)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.aliases_set[alias] = version

    def load(self, name: str, version: int) -> Any:
        return self.records[version - 1].model

    def history(self, name: str) -> list[int]:
        return []

    def set_history(self, name: str, versions: list[int]) -> None:
        pass

    def drift_reference(self, name: str, version: int) -> dict[str, Any] | None:
        return None

    def versions(self, name: str) -> list[RegisteredVersion]:
        return []

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self.aliases_set)

    def model_names(self) -> list[str]:
        return sorted({r.model_name for r in self.records})

    def set_shadow(self, name: str, version: int, sample: float) -> None:
        self.aliases_set["challenger"] = version

    def end_shadow(self, name: str) -> None:
        self.aliases_set.pop("challenger", None)


@dataclass
class InProcessFits:
    """Fits as a worker runs them (trainer.worker.run_training: real training, real failure
    handling), in this process, against a registry in memory."""

    datasets_dir: Path
    store: FeatureStore
    registry: RecordingRegistry
    plugins_dir: Path | None = None

    async def fit(self, event: DataIngested, plan: Plan) -> Outcome | None:
        return worker.run_training(
            event, plan, self.datasets_dir, self.store, self.registry, plugins_dir=self.plugins_dir
        )

    def start(self) -> None:
        pass

    def replace(self) -> None:
        pass

    def close(self) -> None:
        pass
