"""Models in service, held in memory and swapped atomically.

The live table is never changed in place: a swap builds a new dict and rebinds one attribute,
so a request that took a model keeps it to the end, and no request ever sees a half-swapped
state. The version a swap replaces stays loaded for an instant rollback.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.drift import DriftReference
from shared.errors import NoModelInService


@dataclass(frozen=True)
class Served:
    """One loaded, checked and warmed-up model version."""

    name: str
    version: int
    model: Any
    features: tuple[str, ...]
    classes: tuple[Any, ...] | None
    loaded_at: datetime
    # The training rows' distribution, for live drift; None for a version logged without one.
    drift: DriftReference | None = None


class ModelCache:
    def __init__(self) -> None:
        self._live: dict[str, Served] = {}
        self._previous: dict[str, Served] = {}

    def get(self, name: str) -> Served:
        try:
            return self._live[name]
        except KeyError:
            raise NoModelInService(f"no version of model {name!r} is in service") from None

    def version(self, name: str) -> int | None:
        served = self._live.get(name)
        return None if served is None else served.version

    def names(self) -> tuple[str, ...]:
        return tuple(self._live)

    def swap(self, served: Served) -> Served | None:
        """Put `served` in service; the version it replaces is kept as the previous one."""
        old = self._live.get(served.name)
        if old is not None:
            self._previous = {**self._previous, served.name: old}
        self._live = {**self._live, served.name: served}
        return old

    def previous(self, name: str) -> Served | None:
        return self._previous.get(name)
