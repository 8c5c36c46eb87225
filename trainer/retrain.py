"""The retrain watcher: the spec's `training.retrain` rules, checked against what production
did (the prediction log and the labels joined to it), and `retrain-requested` when one holds.

- drift: a feature's PSI over the rows production answered in the last `drift_minutes`,
  against the version's training reference, above `drift_psi` (with at least
  `drift_min_rows` rows in the window);
- decay: production's live quality on its last `decay_rows` labelled rows outside the gate's
  bounds;
- schedule: `schedule_minutes` since the last request (counted from the first check).

A request is claimed with a Redis key that lives for the cooldown (SET NX PX): one request
per cooldown whatever the number of trainers, and none again while it lasts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import redis.asyncio as aioredis

from shared import labels, predlog
from shared.datasets import DatasetSpec, GateSpec, RetrainSpec, load_spec
from shared.drift import DriftReference, psi
from shared.events import RetrainReason, RetrainRequested
from shared.quality import judge
from shared.registry import PRODUCTION, Registry
from trainer.metrics import TrainerMetrics

log = logging.getLogger(__name__)
COOLDOWN_KEY = "streamops:retrain:cooldown:{model}"
LAST_KEY = "streamops:retrain:last:{model}"


@dataclass(frozen=True)
class Verdict:
    reason: RetrainReason
    evidence: dict[str, float]


def drift_verdict(
    store_root: Path,
    model: str,
    version: int,
    reference: DriftReference,
    rule: RetrainSpec,
    *,
    now: datetime,
) -> Verdict | None:
    """Drift, if a feature of the rows `version` answered lately moved beyond the rule."""
    if rule.drift_psi is None:
        return None
    since = now - timedelta(minutes=rule.drift_minutes)
    table = predlog.read_log(store_root, model, since=since, columns=["version", "features"])
    if "features" not in table.column_names:
        return None  # nothing logged, or features not kept for this model
    mine = table.filter(pc.equal(table["version"], version))
    if mine.num_rows < rule.drift_min_rows:
        return None
    struct = mine["features"].combine_chunks()
    kind: Any = struct.type
    frame = pd.DataFrame(
        {kind.field(i).name: struct.field(i).to_pandas() for i in range(kind.num_fields)}
    )
    found: dict[str, float] = {}
    for feature in reference.features:
        if feature.name in frame:
            counts = np.bincount(feature.bin_of(frame[feature.name]), minlength=len(feature.shares))
            found[feature.name] = psi(feature.shares, counts)
    drifted = {name: value for name, value in found.items() if value > rule.drift_psi}
    if not drifted:
        return None
    return Verdict("drift", {**drifted, "rows": float(mine.num_rows)})


def decay_verdict(
    store_root: Path, model: str, version: int, gate: GateSpec, rule: RetrainSpec
) -> Verdict | None:
    """Decay, if `version`'s last labelled rows put a live metric outside the gate."""
    if not rule.decay:
        return None
    joined = labels.read_joined(store_root, model)
    if joined.num_rows == 0 or "version" not in joined.column_names:
        return None
    mine = joined.filter(pc.equal(joined["version"], version))
    mine = mine.sort_by([("labelled_at", "descending")]).slice(0, rule.decay_rows)
    if mine.num_rows < rule.decay_rows:
        return None
    figures = judge(mine)
    outside = {
        metric: value
        for metric, value in figures.items()
        if (metric in gate.minimum and value < gate.minimum[metric])
        or (metric in gate.maximum and value > gate.maximum[metric])
    }
    if not outside:
        return None
    return Verdict("decay", {**outside, "rows": figures["rows"]})


@dataclass
class RetrainWatcher:
    client: aioredis.Redis
    registry: Registry
    datasets_dir: Path
    store_root: Path
    publish: Callable[[RetrainRequested], Awaitable[Any]]
    interval_s: float = 30.0
    clock: Callable[[], float] = time.time
    metrics: TrainerMetrics | None = None
    _references: dict[tuple[str, int], DriftReference | None] = field(default_factory=dict)

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # the registry or Redis away for a moment: next time
                log.warning("checking the retrain rules failed", exc_info=True)
            await asyncio.sleep(self.interval_s)

    async def check(self) -> list[RetrainRequested]:
        """One pass over every spec with retrain rules; the requests published."""
        sent = []
        for spec in await anyio.to_thread.run_sync(self._specs):
            request = await self._check(spec)
            if request is not None:
                await self.publish(request)
                log.info(
                    "retrain requested for %s (%s): %s",
                    request.model_name,
                    request.reason,
                    request.evidence,
                )
                sent.append(request)
                if self.metrics is not None:
                    self.metrics.retrain_requests.labels(request.model_name, request.reason).inc()
        if self.metrics is not None:
            self.metrics.retrain_checks.inc()
        return sent

    def _specs(self) -> list[DatasetSpec]:
        found = []
        for path in sorted(self.datasets_dir.glob("*/spec.yaml")):
            try:
                spec = load_spec(self.datasets_dir, path.parent.name)
            except Exception as exc:  # the ingestor reports broken specs
                log.debug("skipping %s: %s", path, exc)
                continue
            if spec.training is not None and spec.training.retrain is not None:
                found.append(spec)
        return found

    async def _check(self, spec: DatasetSpec) -> RetrainRequested | None:
        assert spec.training is not None
        assert spec.training.retrain is not None
        rule = spec.training.retrain
        model = spec.model_name
        now = self.clock()
        version = await anyio.to_thread.run_sync(self.registry.alias, model, PRODUCTION)
        verdict = None
        if version is not None:
            verdict = await anyio.to_thread.run_sync(self._verdict, spec, version, now)
        if verdict is None:
            verdict = await self._schedule(model, rule, now)
        if verdict is None or not await self._claim(model, rule):
            return None
        await self.client.set(LAST_KEY.format(model=model), str(now))
        return RetrainRequested(
            model_name=model,
            dataset=spec.name,
            version=version,
            reason=verdict.reason,
            evidence=verdict.evidence,
        )

    def _verdict(self, spec: DatasetSpec, version: int, now: float) -> Verdict | None:
        assert spec.training is not None
        assert spec.training.retrain is not None
        rule = spec.training.retrain
        when = datetime.fromtimestamp(now, UTC)
        reference = self._reference(spec.model_name, version)
        drift = None
        if reference is not None:
            drift = drift_verdict(
                self.store_root, spec.model_name, version, reference, rule, now=when
            )
        return drift or decay_verdict(
            self.store_root, spec.model_name, version, spec.training.gate, rule
        )

    def _reference(self, model: str, version: int) -> DriftReference | None:
        key = (model, version)
        if key not in self._references:
            raw = self.registry.drift_reference(model, version)
            self._references[key] = None if raw is None else DriftReference.model_validate(raw)
        return self._references[key]

    async def _schedule(self, model: str, rule: RetrainSpec, now: float) -> Verdict | None:
        if rule.schedule_minutes is None:
            return None
        key = LAST_KEY.format(model=model)
        if await self.client.set(key, str(now), nx=True):
            return None  # first seen: the schedule counts from now
        last = float(await self.client.get(key) or now)
        minutes = (now - last) / 60
        if minutes < rule.schedule_minutes:
            return None
        return Verdict("schedule", {"minutes": minutes})

    async def _claim(self, model: str, rule: RetrainSpec) -> bool:
        """Whether this trainer may request now: no request within the cooldown, anywhere."""
        cooldown_ms = max(1, int(rule.cooldown_minutes * 60_000))
        claimed = await self.client.set(
            COOLDOWN_KEY.format(model=model), "1", nx=True, px=cooldown_ms
        )
        return bool(claimed)
