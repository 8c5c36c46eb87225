"""Serving, free of any transport: keep the production models loaded, swap on promotion, drop
what left production, predict whole batches in one call.

Which models: every registered model with a `production` alias that the replica's settings
let it serve (`serves`), not a list fixed at start. Their schemas come from the dataset specs
(read again at each converge) or from their MLflow signatures.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from predictor.cache import Aside, ModelCache, Served
from predictor.drift import DriftMonitor
from predictor.loader import load
from predictor.outputs import Prediction, predict_with
from shared.compiled import CompiledModel
from shared.datasets import DatasetSpec
from shared.errors import ModelRefused, NoModelInService
from shared.events import ModelPromoted
from shared.model_loading import LoadPolicy
from shared.registry import CHALLENGER, PRODUCTION, ServingRegistry
from shared.schema import input_columns, input_frame

__all__ = [
    "PINNED_KEPT",
    "PRODUCTION",
    "AsideChanges",
    "Changes",
    "Prediction",
    "Predictor",
    "predict_with",
]

log = logging.getLogger(__name__)
# Pinned versions kept loaded per replica beyond the live and previous ones.
PINNED_KEPT = 2


@dataclass(frozen=True)
class Changes:
    """What a converge has to do: versions to put in service, models to take out."""

    stale: list[tuple[str, int]]
    gone: list[str]


@dataclass(frozen=True)
class AsideChanges:
    """For one alias beside production (challenger, canary): versions to load (model,
    version, share), shares to change, and models with none now."""

    stale: list[tuple[str, int, float]]
    resampled: list[tuple[str, float]]
    gone: list[str]


class Predictor:
    """The production models this replica may serve (`serves`), in `cache`."""

    def __init__(
        self,
        registry: ServingRegistry,
        specs: dict[str, DatasetSpec],
        cache: ModelCache,
        drift: DriftMonitor | None = None,
        *,
        policy: LoadPolicy | None = None,
        serves: Callable[[str], bool] | None = None,
        read_specs: Callable[[], dict[str, DatasetSpec]] | None = None,
        compiles: Callable[[str], bool] | None = None,
        threads: int = 1,
        shadow_sample: float = 0.1,
    ) -> None:
        self.registry = registry
        # Dataset specs by registered model name: their models' schemas. Read again at each
        # converge when `read_specs` is given; replaced whole, never changed in place.
        self.specs = specs
        self.cache = cache
        self.policy = policy or LoadPolicy()
        self.serves = serves or (lambda name: True)
        # Whether a model may be served compiled (ONNX) when its graph is verified; the
        # threads a compiled model predicts with.
        self.compiles = compiles or (lambda name: True)
        self.threads = threads
        self.read_specs = read_specs
        # Online rows are counted against the training reference (batch jobs are not: one big
        # file would swamp the window that watches live traffic).
        self.drift = drift
        # Versions loaded for batch jobs pinned to a version no longer live nor previous.
        self._pinned: dict[tuple[str, int], Served] = {}
        # Candidates loaded ahead of their promotion (one per model), so a promotion is a swap.
        self._staged: dict[str, Served] = {}
        # Versions refused for good (ModelRefused), by model: not tried again at each
        # converge, only when promoted again.
        self._refused: dict[str, int] = {}
        # One load at a time per version: a promotion arriving while its version is being
        # prefetched waits for that load instead of doing it again.
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self._loading_guard = threading.Lock()
        # The share of a model's online requests its challenger predicts when the registry
        # says none; versions refused for good under an alias, by (alias, model): tried again
        # when aliased anew.
        self.shadow_sample = shadow_sample
        self._refused_asides: dict[tuple[str, str], int] = {}
        # Production moves announced per model (model-promoted): see announce and swap_in.
        self._moves: dict[str, int] = {}

    # --- which models, which versions ----------------------------------------------------------

    def changes(self) -> Changes:
        """Compare what is served here with the registry's `production` aliases (one registry
        call): at start, and periodically, so a replica that missed an event catches up. A
        registry that cannot be read raises: nothing is dropped on a failed read."""
        wanted = {n: v for n, v in self.registry.production_versions().items() if self.serves(n)}
        if self.read_specs is not None:
            self._new_specs(self.read_specs())
        stale = [
            (name, version)
            for name, version in sorted(wanted.items())
            if version != self.cache.version(name) and self._refused.get(name) != version
        ]
        gone = [name for name in self.cache.names() if name not in wanted]
        return Changes(stale, gone)

    def _new_specs(self, specs: dict[str, DatasetSpec]) -> None:
        """Take the specs read now; a model refused before its spec existed (no signature, say)
        has new grounds to be tried on."""
        added = specs.keys() - self.specs.keys()
        self.specs = specs
        if added & self._refused.keys():
            self._refused = {k: v for k, v in self._refused.items() if k not in added}

    def stale(self) -> list[tuple[str, int]]:
        return self.changes().stale

    def converge(self) -> list[Served]:
        """Load every stale version and drop what left production (ModelLoadFailed stops at
        the first that fails)."""
        changes = self.changes()
        for name in changes.gone:
            self.remove(name)
        swapped = (self.swap_in(name, version) for name, version in changes.stale)
        return [served for served in swapped if served is not None]

    def moves(self, name: str) -> int:
        """How many moves of `name`'s production alias this replica has been told of."""
        return self._moves.get(name, 0)

    def all_moves(self) -> Mapping[str, int]:
        """Every model's count of moves so far (a snapshot: the table is never changed in
        place)."""
        return self._moves

    def announce(self, name: str) -> int:
        """A move of `name`'s production alias arrived (`model-promoted`): any swap decided
        before it is void (see swap_in). The new count."""
        count = self.moves(name) + 1
        self._moves = {**self._moves, name: count}
        return count

    def wants(self, event: ModelPromoted) -> bool:
        """Whether a promotion concerns this replica and changes what it serves."""
        return (
            event.alias == PRODUCTION
            and self.serves(event.model_name)
            and self.cache.version(event.model_name) != event.version
        )

    def retry(self, name: str, version: int) -> None:
        """Forget that `version` was refused: it was promoted again, so it is tried again."""
        if self._refused.get(name) == version:
            self._refused = {k: v for k, v in self._refused.items() if k != name}

    def refused(self, name: str) -> int | None:
        """The version of `name` refused for good, if any."""
        return self._refused.get(name)

    def promoted(self, event: ModelPromoted) -> Served | None:
        """Swap in the promoted version (ModelLoadFailed leaves the old one serving)."""
        if not self.wants(event):
            return None
        self.retry(event.model_name, event.version)
        return self.swap_in(event.model_name, event.version)

    def remove(self, name: str) -> Served | None:
        """Stop serving `name` (its `production` alias is gone); the version that served."""
        self._staged = {k: v for k, v in self._staged.items() if k != name}
        self._pinned = {k: v for k, v in self._pinned.items() if k[0] != name}
        old = self.cache.remove(name)
        if self.drift is not None:
            self.drift.forget(name)
        if old is not None:
            log.info("%s: no longer served (was v%d): not in production", name, old.version)
        return old

    # --- challengers and canaries (docs/rollout.md) -------------------------------------------

    def aside_changes(self, alias: str) -> AsideChanges:
        """Compare the versions held here under `alias` (challenger, canary) with the
        registry's, for the models served here (production's own version is no challenger
        nor canary of itself)."""
        if alias == CHALLENGER:
            challengers = self.registry.challengers().items()
            found = {n: (c.version, c.sample or self.shadow_sample) for n, c in challengers}
        else:
            found = {n: (c.version, c.share) for n, c in self.registry.canaries().items()}
        wanted = {
            name: aliased
            for name, aliased in found.items()
            if self.cache.version(name) not in (None, aliased[0])
        }
        stale, resampled = [], []
        for name, (version, share) in sorted(wanted.items()):
            held = self.cache.aside(alias, name)
            if held is None or held.served.version != version:
                if self._refused_asides.get((alias, name)) != version:
                    stale.append((name, version, share))
            elif held.share != share:
                resampled.append((name, share))
        gone = [name for name in self.cache.asides(alias) if name not in wanted]
        return AsideChanges(stale, resampled, gone)

    def load_aside(self, alias: str, name: str, version: int, share: float) -> Served | None:
        """Load `version` as `name`'s challenger or canary (blocking: from a thread);
        ModelLoadFailed leaves the one before (if any) in place. None when it is held under
        that alias already (an event and a converge both asked for it): not loaded twice."""
        key = (alias, name)
        self._refused_asides = {k: v for k, v in self._refused_asides.items() if k != key}
        with self._lock_for(name, version):
            held = self.cache.aside(alias, name)
            if held is not None and held.served.version == version:
                self.reshare(alias, name, share)
                return None
            staged = self._staged.get(name)
            if staged is not None and staged.version == version:
                served = staged  # a candidate prefetched when it was trained
            else:
                try:
                    served = self._load(name, version, refuse=False)
                except ModelRefused:
                    self._refused_asides = {**self._refused_asides, key: version}
                    raise
            self.cache.set_aside(alias, name, Aside(served, share))
        log.info("%s: v%d is the %s for %.0f%% of the requests", name, version, alias, share * 100)
        return served

    def reshare(self, alias: str, name: str, share: float) -> None:
        held = self.cache.aside(alias, name)
        if held is not None:
            self.cache.set_aside(alias, name, Aside(held.served, share))

    def end_aside(self, alias: str, name: str) -> None:
        if self.cache.aside(alias, name) is not None:
            self.cache.set_aside(alias, name, None)
            log.info("%s: no %s any more", name, alias)

    def predict_shadow(self, served: Served, columns: Mapping[str, Any]) -> Prediction:
        """The challenger's answer to rows production answered (no drift counted: the
        rows were counted once, for production)."""
        if isinstance(served.model, CompiledModel):
            return predict_with(served, input_columns(served.schema, columns))
        return predict_with(served, input_frame(served.schema, pd.DataFrame(columns)))

    # --- predicting ----------------------------------------------------------------------------

    def predict(
        self,
        name: str,
        rows: pd.DataFrame | None,
        columns: Mapping[str, Any] | None = None,
        version: int | None = None,
    ) -> Prediction:
        """One call for the whole batch; the model is taken once, so a swap in the middle does
        not split a batch between versions. `columns` are the same rows as plain lists (an
        online batch as it arrived), or the rows when `rows` is None: a compiled model is fed
        from them with no DataFrame built, and drift bins them (cheaper than a frame).
        `version`: the canary's, for a batch the gateway routed to it (production's answers
        when this replica holds no such canary)."""
        served = self.cache.serving(name, version)
        if columns is not None and isinstance(served.model, CompiledModel):
            features: Any = input_columns(served.schema, columns)
        else:
            frame = rows if rows is not None else pd.DataFrame(columns)
            features = input_frame(served.schema, frame)
        prediction = predict_with(served, features)
        if self.drift is not None and served.version == self.cache.version(name):
            # A canary's rows are not production's: they would blur its drift window.
            self.drift.observe(served, features if columns is None else columns)
        return prediction

    # --- loading -------------------------------------------------------------------------------

    def model_for(self, name: str, version: int) -> Served:
        """Version `version` of `name`, for a batch job pinned to it: the live one, the
        previous one, the staged candidate, or loaded here (the last two such loads are kept).
        Blocking: call from a thread. NoModelInService when this replica does not serve
        `name`; ModelLoadFailed."""
        if name not in self.cache.names() and name not in self._staged:
            raise NoModelInService(f"this replica does not serve model {name!r}")
        # Taken once: a swap between a check and a get could hand out another version.
        live = self.cache.get(name) if self.cache.version(name) is not None else None
        if live is not None and live.version == version:
            return live
        previous = self.cache.previous(name)
        if previous is not None and previous.version == version:
            return previous
        staged = self._staged.get(name)
        if staged is not None and staged.version == version:
            return staged
        with self._lock_for(name, version):  # one load per version, whoever asks
            served = self._pinned.get((name, version))
            if served is None:
                served = self._load(name, version)
                kept = list(self._pinned.items())[-(PINNED_KEPT - 1) :]
                self._pinned = {**dict(kept), (name, version): served}
            return served

    def stage(self, name: str, version: int) -> Served | None:
        """Load a candidate (a version just trained) ahead of its promotion; None when it is
        already in service or staged."""
        with self._lock_for(name, version):
            staged = self._staged.get(name)
            if self.cache.version(name) == version or (staged and staged.version == version):
                return None
            served = self._load(name, version)
            self._staged = {**self._staged, name: served}
            return served

    def swap_in(self, name: str, version: int, moves: int | None = None) -> Served | None:
        """Put `version` in service: the staged candidate or the previous version if it is
        one of those (instant), else loaded, checked and warmed up now. With `moves` (what
        `moves(name)` said when the decision was taken): None, and nothing swapped, when
        production has moved since; a decision read from the registry must not undo a newer
        promotion or rollback that arrived while it was loading."""
        with self._lock_for(name, version):
            if moves is not None and self.moves(name) != moves:
                return None
            staged = self._staged.get(name)
            previous = self.cache.previous(name)
            if staged is not None and staged.version == version:
                served = staged
            elif previous is not None and previous.version == version:
                served = previous  # a rollback: still loaded
            else:
                served = self._load(name, version)
            if moves is not None and self.moves(name) != moves:
                log.info("%s: not serving v%d: production moved while it loaded", name, version)
                self._staged = {**self._staged, name: served}  # a swap away if it comes back
                return None
            if staged is served:  # the candidate goes into service: no longer staged
                self._staged = {k: v for k, v in self._staged.items() if k != name}
            old = self.cache.swap(served)
        log.info("%s: serving v%d (was %s)", name, version, f"v{old.version}" if old else "nothing")
        return served

    def _load(self, name: str, version: int, *, refuse: bool = True) -> Served:
        """Loaded for service; a version refused for good is remembered as production's
        (`refuse`), not tried again at each converge."""
        try:
            policy = replace(self.policy, compiled=self.compiles(name))
            return load(
                self.registry, name, version, self.specs.get(name), policy, threads=self.threads
            )
        except ModelRefused:
            if refuse:
                self._refused = {**self._refused, name: version}
            raise

    def _lock_for(self, name: str, version: int) -> threading.Lock:
        with self._loading_guard:
            return self._loading.setdefault((name, version), threading.Lock())
