"""Models in service, held in memory and swapped atomically.

The live table is never changed in place: a swap builds a new dict and rebinds one attribute,
so a request that took a model keeps it to the end, and no request ever sees a half-swapped
state. The version a swap replaces stays loaded for an instant rollback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.drift import DriftReference
from shared.errors import NoModelInService
from shared.events import Lineage
from shared.registry import CANARY
from shared.schema import ModelSchema


@dataclass(frozen=True)
class Served:
    """One loaded, checked and warmed-up model version."""

    name: str
    version: int
    model: Any
    # What it takes: a dataset spec's feature columns, or its MLflow signature's.
    schema: ModelSchema
    # Class labels when the model gives probabilities (predict_proba and classes_).
    classes: tuple[Any, ...] | None
    loaded_at: datetime
    # The training rows' distribution, for live drift; None for a version logged without one.
    drift: DriftReference | None = None
    flavor: str = "sklearn"
    # What runs `model`: onnx (its compiled graph, `model` is a CompiledModel) or native; and
    # the compile verdict (verified, or why not).
    runtime: str = "native"
    verdict: str = ""
    # Where it comes from (its run, its training dataset), copied into the prediction log.
    lineage: Lineage = field(default_factory=Lineage)

    @property
    def features(self) -> tuple[str, ...]:
        return self.schema.names


@dataclass(frozen=True)
class Aside:
    """A version held beside production under an alias (docs/rollout.md): a challenger, and
    the share of the online requests it predicts as well; or a canary, and the share routed
    to it."""

    served: Served
    share: float


class ModelCache:
    def __init__(self) -> None:
        self._live: dict[str, Served] = {}
        self._previous: dict[str, Served] = {}
        # alias (challenger, canary) → model → the version held under it
        self._asides: dict[str, dict[str, Aside]] = {}

    def get(self, name: str) -> Served:
        try:
            return self._live[name]
        except KeyError:
            raise NoModelInService(f"no version of model {name!r} is in service") from None

    def version(self, name: str) -> int | None:
        served = self._live.get(name)
        return None if served is None else served.version

    def runtime(self, name: str, version: int | None = None) -> str:
        """What runs the version of `name` in service (onnx, native), or none; with `version`,
        what runs the version that answers a batch meant for it (see serving)."""
        served = self._canary(name, version) or self._live.get(name)
        return "none" if served is None else served.runtime

    def names(self) -> tuple[str, ...]:
        return tuple(self._live)

    def live(self) -> tuple[Served, ...]:
        """Every model in service, from one snapshot of the table."""
        return tuple(self._live.values())

    def swap(self, served: Served) -> Served | None:
        """Put `served` in service; the version it replaces is kept as the previous one."""
        old = self._live.get(served.name)
        if old is not None:
            self._previous = {**self._previous, served.name: old}
        self._live = {**self._live, served.name: served}
        return old

    def previous(self, name: str) -> Served | None:
        return self._previous.get(name)

    def serving(self, name: str, version: int | None) -> Served:
        """What answers a batch of `name` meant for `version`: the canary when it is that
        version, production otherwise (a canary ended since the gateway chose it, say)."""
        return self._canary(name, version) or self.get(name)

    def _canary(self, name: str, version: int | None) -> Served | None:
        """`name`'s canary if it is `version`."""
        if version is None:  # production's batch: the usual case, no lookup
            return None
        canary = self.aside(CANARY, name)
        return canary.served if canary is not None and canary.served.version == version else None

    def lineage(self, name: str, version: int | None) -> Lineage:
        """The lineage of `version` of `name` if it is served here (or was, just before the
        last swap, or is its canary); an empty one otherwise."""
        for served in (self._live.get(name), self._previous.get(name), self._canary(name, version)):
            if served is not None and served.version == version:
                return served.lineage
        return Lineage()

    def remove(self, name: str) -> Served | None:
        """Take `name` out of service (its previous version and challenger too); the version
        that served."""
        old = self._live.get(name)
        self._live = {k: v for k, v in self._live.items() if k != name}
        self._previous = {k: v for k, v in self._previous.items() if k != name}
        for alias in tuple(self._asides):
            self.set_aside(alias, name, None)
        return old

    def aside(self, alias: str, name: str) -> Aside | None:
        return self._asides.get(alias, {}).get(name)

    def asides(self, alias: str) -> dict[str, Aside]:
        return self._asides.get(alias, {})

    def set_aside(self, alias: str, name: str, held: Aside | None) -> None:
        """`name`'s version under `alias` from now on (None: none), swapped as the live table
        is: a reader holds one snapshot."""
        rest = {k: v for k, v in self.asides(alias).items() if k != name}
        self._asides = {**self._asides, alias: rest if held is None else {**rest, name: held}}
