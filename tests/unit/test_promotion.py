"""Promotion, rollback and the watcher of external moves, on an in-memory registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from shared.errors import NothingToRollBack
from shared.promotion import promote, rollback
from shared.registry import RegisteredVersion, TrainingRecord
from trainer.watcher import external_moves


@dataclass
class FakeRegistry:
    """Aliases and a production history per model; no runs, no artifacts."""

    aliases_: dict[str, dict[str, int]] = field(default_factory=dict)
    histories: dict[str, list[int]] = field(default_factory=dict)

    def find(self, name: str, tag: str, value: str) -> RegisteredVersion | None:
        return None

    def log(self, record: TrainingRecord) -> RegisteredVersion:
        raise NotImplementedError

    def alias(self, name: str, alias: str) -> int | None:
        return self.aliases_.get(name, {}).get(alias)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.aliases_.setdefault(name, {})[alias] = version

    def load(self, name: str, version: int) -> Any:
        raise NotImplementedError

    def drift_reference(self, name: str, version: int) -> dict[str, Any] | None:
        return None

    def history(self, name: str) -> list[int]:
        return list(self.histories.get(name, []))

    def set_history(self, name: str, versions: list[int]) -> None:
        self.histories[name] = list(versions)

    def versions(self, name: str) -> list[RegisteredVersion]:
        return []

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self.aliases_.get(name, {}))

    def model_names(self) -> list[str]:
        return sorted(self.aliases_)


def test_promotions_record_history_and_rollback_walks_it_back() -> None:
    registry = FakeRegistry()
    first = promote(registry, "m", 1, "auto")
    assert (first.version, first.previous_version) == (1, None)
    promote(registry, "m", 2, "auto")
    third = promote(registry, "m", 3, "manual")
    assert (third.version, third.previous_version, third.reason) == (3, 2, "manual")
    back = rollback(registry, "m")
    assert (back.version, back.previous_version, back.reason) == (2, 3, "rollback")
    assert registry.alias("m", "production") == 2
    assert rollback(registry, "m").version == 1
    with pytest.raises(NothingToRollBack):
        rollback(registry, "m")


def test_promoting_the_version_in_production_changes_nothing() -> None:
    registry = FakeRegistry()
    once = promote(registry, "m", 4, "auto")
    again = promote(registry, "m", 4, "auto")
    assert again.previous_version is None
    assert registry.history("m") == [4]
    assert once.version == again.version


def test_a_move_made_outside_streamops_is_reported_after_two_polls() -> None:
    registry = FakeRegistry()
    promote(registry, "m", 1, "auto")
    suspects: dict[str, int] = {}
    assert external_moves(registry, suspects) == []
    registry.set_alias("m", "production", 5)  # someone used the MLflow UI
    assert external_moves(registry, suspects) == []
    (move,) = external_moves(registry, suspects)
    assert (move.version, move.previous_version, move.reason) == (5, 1, "external")
    assert external_moves(registry, suspects) == []
    assert registry.history("m") == [1, 5]


def test_a_streamops_promotion_caught_half_way_is_not_taken_for_an_external_move() -> None:
    registry = FakeRegistry()
    promote(registry, "m", 1, "auto")
    suspects: dict[str, int] = {}
    registry.set_history("m", [1, 2])  # promote() wrote the history, not yet the alias
    assert external_moves(registry, suspects) == []
    registry.set_alias("m", "production", 2)  # ... and now the alias
    assert external_moves(registry, suspects) == []
    assert external_moves(registry, suspects) == []
