"""A replica's life: load production before it is ready, follow promotions and new versions,
converge with the registry, and say what it loaded and what it serves.

The plain use case (which version to load, swaps, predictions) is predictor/service.py; this
module runs it off the event loop and reports on it (metrics, `model-loads`, heartbeat).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio.to_thread
import redis.asyncio as aioredis

from predictor.cache import Served
from predictor.metrics import PredictorMetrics
from predictor.online import OnlinePredictor
from predictor.runtimes import RUNTIMES
from predictor.service import PRODUCTION, Predictor
from shared.errors import ModelLoadFailed
from shared.events import ModelLoaded, ModelPromoted, ModelTrained
from shared.registry import CANARY, CHALLENGER
from shared.settings import PredictorSettings
from shared.telemetry import StatusBoard, beat
from shared.wire import entry_fields

SERVICE = "predictor"
Trigger = Literal["start", "promotion", "converge", "prefetch", "shadow", "canary"]
# The trigger of a load under each alias beside production.
ASIDE_TRIGGERS: dict[str, Trigger] = {CHALLENGER: "shadow", CANARY: "canary"}
log = logging.getLogger(__name__)


@dataclass
class Replica:
    settings: PredictorSettings
    predictor: Predictor
    metrics: PredictorMetrics
    board: StatusBoard
    online: OnlinePredictor
    # Where `model-loads` events go; None publishes nothing.
    client: aioredis.Redis | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Set to beat at once: what the replica serves changed.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        """Load the production models before anything else: a replica is ready only then."""
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=self.settings.threads)  # for the process, from now on
        await self.converge("start")

    async def converge(self, trigger: Trigger = "converge") -> None:
        """Put in service what is in production and not served here; take out what left."""
        # What the replica had been told before the read: a promotion or rollback event that
        # arrives during the read (or a load) outranks what the read found.
        told = self.predictor.all_moves()
        try:
            changes = await anyio.to_thread.run_sync(self.predictor.changes)
        except Exception as exc:  # registry down: serve what we have, try again later
            log.error("cannot read the registry to converge: %s", exc)
            return
        for name in changes.gone:
            if self.predictor.moves(name) == told.get(name, 0):
                self.remove(name)
        for name, version in changes.stale:
            await self.load(name, version, trigger, moves=told.get(name, 0))
        await self.converge_asides()

    async def converge_asides(self, *aliases: str) -> None:
        """Load the challengers and canaries aliased in the registry (or only `aliases`'s),
        drop those no longer aliased (no challengers at all with STREAMOPS_PREDICTOR_SHADOW
        =false)."""
        for alias in aliases or tuple(ASIDE_TRIGGERS):
            if alias == CHALLENGER and not self.settings.shadow:
                continue
            try:
                changes = await anyio.to_thread.run_sync(self.predictor.aside_changes, alias)
            except Exception as exc:
                log.error("cannot read the registry's %s aliases: %s", alias, exc)
                continue
            for name in changes.gone:
                self.predictor.end_aside(alias, name)
            for name, share in changes.resampled:
                self.predictor.reshare(alias, name, share)
            for name, version, share in changes.stale:
                await self.load_aside(alias, name, version, share)
            if alias == CANARY and (changes.gone or changes.resampled or changes.stale):
                self.changed.set()  # the gateways route by what the heartbeat says

    async def promoted(self, event: ModelPromoted) -> None:
        if event.alias in ASIDE_TRIGGERS:
            if self.settings.serves(event.model_name):
                await self.converge_asides(event.alias)  # its share is in the registry
            return
        if event.alias != PRODUCTION or not self.settings.serves(event.model_name):
            return
        moves = self.predictor.announce(event.model_name)
        if self.predictor.wants(event):
            self.predictor.retry(event.model_name, event.version)  # promoted again: try again
            await self.load(event.model_name, event.version, "promotion", moves=moves)

    async def catch_up(self, name: str) -> None:
        """Load the production version of `name` now if this replica may serve it and does
        not yet (a batch job for a model whose alias was set a moment ago, before any converge
        here). A registry that cannot be read leaves things as they are."""
        if not self.settings.serves(name) or self.predictor.cache.version(name) is not None:
            return
        told = self.predictor.moves(name)
        try:
            version = await anyio.to_thread.run_sync(
                self.predictor.registry.alias, name, PRODUCTION
            )
        except Exception as exc:
            log.warning("cannot read the production alias of %s: %s", name, exc)
            return
        if version is not None and self.predictor.refused(name) != version:
            await self.load(name, version, "converge", moves=told)

    async def trained(self, event: ModelTrained) -> None:
        """A version just trained is a candidate: load it now, so its promotion is a swap."""
        if self.settings.serves(event.model_name):
            await self.load(event.model_name, event.model_version, "prefetch")

    def remove(self, name: str) -> None:
        old = self.predictor.remove(name)
        if old is not None:
            self.metrics.version.remove(name)
            for runtime in RUNTIMES:
                self.metrics.runtime.remove(name, runtime)
            self.changed.set()

    async def load(
        self, name: str, version: int, trigger: Trigger, moves: int | None = None
    ) -> None:
        """Load `version` in a thread and swap it in (stage it, for a prefetch), unless
        production moved since `moves` (Predictor.swap_in); say what happened on
        `model-loads` (a refused version keeps the old one serving)."""
        started = time.monotonic()
        reason = ""
        served = None
        try:
            if trigger == "prefetch":
                served = await anyio.to_thread.run_sync(self.predictor.stage, name, version)
            else:
                served = await anyio.to_thread.run_sync(
                    self.predictor.swap_in, name, version, moves
                )
            if served is None:
                return  # already staged or in service, or production moved meanwhile
        except ModelLoadFailed as exc:
            reason = str(exc)
            log.error("not loading %s v%d (%s): %s", name, version, trigger, exc)
        seconds = time.monotonic() - started
        self.metrics.loads.labels(name, trigger, "refused" if reason else "loaded").inc()
        if not reason:
            self.metrics.load_seconds.labels(name).observe(seconds)
        self._export_versions()
        if not reason and trigger != "prefetch":
            self.changed.set()  # the gateway learns of it now, not at the next beat
        event = self._loaded(name, version, trigger, reason=reason, seconds=seconds, served=served)
        await self._announce(event)

    async def load_aside(self, alias: str, name: str, version: int, share: float) -> None:
        """Load a challenger or canary in a thread; say so on `model-loads` (trigger `shadow`
        or `canary`)."""
        trigger = ASIDE_TRIGGERS[alias]
        started = time.monotonic()
        reason, served = "", None
        try:
            served = await anyio.to_thread.run_sync(
                self.predictor.load_aside, alias, name, version, share
            )
        except ModelLoadFailed as exc:
            reason = str(exc)
            log.error("not loading %s %s v%d: %s", alias, name, version, exc)
        if served is None and not reason:
            return  # held already: another converge loaded it meanwhile
        self.metrics.loads.labels(name, trigger, "refused" if reason else "loaded").inc()
        seconds = time.monotonic() - started
        event = self._loaded(name, version, trigger, reason=reason, seconds=seconds, served=served)
        await self._announce(event)

    def _loaded(
        self,
        name: str,
        version: int,
        trigger: Trigger,
        *,
        reason: str,
        seconds: float,
        served: Served | None,
    ) -> ModelLoaded:
        """The `model-loads` event of a load (refused when `reason` says why)."""
        return ModelLoaded(
            replica=self.settings.common.consumer_name,
            model_name=name,
            version=version,
            serving=self.predictor.cache.version(name),
            loaded=not reason,
            reason=reason[:2000],
            seconds=round(seconds, 4),
            trigger=trigger,
            runtime=served.runtime if served else "",
            compiled=served.verdict[:2000] if served else "",
        )

    def serving(self) -> dict[str, Any]:
        """What the heartbeat tells the gateway: the version and input schema of each model in
        service, and its canary with the share routed to it (`{"models": {name: version},
        "schemas": {name: ModelSchema as JSON}, "canaries": {name: [version, share]}}`)."""
        cache = self.predictor.cache
        served = cache.live()
        return {
            "models": {s.name: s.version for s in served},
            "schemas": {s.name: s.schema.model_dump(mode="json") for s in served},
            "canaries": {
                name: [held.served.version, held.share]
                for name, held in cache.asides(CANARY).items()
            },
        }

    async def start_background(self) -> None:
        """After the models are in and the subscribers read: answer predict batches, beat,
        converge."""
        consumer = self.settings.common.consumer_name
        self.tasks.append(asyncio.create_task(self.online.run()))
        self.tasks.append(
            asyncio.create_task(
                beat(self.board, SERVICE, consumer, details=self.serving, now=self.changed)
            )
        )
        self.tasks.append(asyncio.create_task(self._converge_forever()))

    async def stop_background(self) -> None:
        for task in self.tasks:
            task.cancel()

    def _export_versions(self) -> None:
        cache = self.predictor.cache
        for name in cache.names():
            version = cache.version(name)
            if version is not None:
                self.metrics.version.labels(name).set(version)
            serving = cache.runtime(name)
            for runtime in RUNTIMES:
                self.metrics.runtime.labels(name, runtime).set(int(runtime == serving))

    async def _announce(self, event: ModelLoaded) -> None:
        if self.client is None:
            return
        try:
            await self.client.xadd(event.stream, entry_fields(event), maxlen=10_000)  # type: ignore[arg-type]
        except Exception:
            log.warning("could not publish %s", event.stream, exc_info=True)

    async def _converge_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.converge_s)
            await self.converge()
