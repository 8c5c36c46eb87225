"""The rollout guard (docs/rollout.md): after every promotion, and while a canary runs, watch
the new version against the old one on live traffic, and undo it when it breaches.

It reads three streams without a consumer group (every trainer's guard sees every entry):
`predictions` (what each version answered, from the prediction log's entries, shadow ones
left out), `predict-failures` (what each version failed) and `model-promoted` (what to
watch). The judgement is trainer/guard.py's. On a breach:

- a promotion is rolled back: `production` goes back to the version before, and
  `model-promoted` says so with reason `guard` and the breaches;
- a canary is withdrawn: its alias is removed, `model-promoted` (alias canary, withdrawn)
  with reason `guard` and the breaches.

The verdict is also a tag on the version (`streamops.guard`, shown by `streamops models`) and
metrics (`streamops_guard_*`). A watch that ends with no breach is `held`; a canary with
`rollout.steps` goes up a step every `step_minutes` while it holds, and reaching 100 is
promoted (reason `rollout`), which starts a promotion watch of its own.

A third kind of watch is a challenger the trainer set because the spec asks for shadow
evidence first (`rollout.shadow_first`): its answers are paired with production's
(trainer/evidence.py), and it is promoted (reason `rollout`) once the evidence holds, or left
a challenger with the reason in its tag.

Several trainers run a guard each: a Redis key claims each verdict (SET NX), and the guard
that acts first checks that the alias still points where it watched, so nothing is undone
twice or after someone moved it. Watches are kept in a Redis hash, so a restarted trainer
goes on watching until their windows end; what it missed meanwhile it reads from the
prediction log (trainer/watches.py: logged_tally).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import redis.asyncio as aioredis
from pydantic import ValidationError

from shared.broker import xread_all
from shared.datasets import METRICS
from shared.events import GuardBreach, ModelPromoted, PredictionsFailed, PredictionsLogged
from shared.promotion import canary
from shared.registry import CANARY, CHALLENGER, GUARD_TAG, PRODUCTION, GuardRegistry
from shared.wire import entry_body
from trainer.evidence import Pairing, decide
from trainer.guard import Tally, judge, summary
from trainer.metrics import TrainerMetrics
from trainer.watches import (
    Kind,
    Watch,
    Watching,
    both_live,
    live_of,
    logged_tally,
    promote_canary,
    rule_of,
    shadow_verdict,
    undo,
)

log = logging.getLogger(__name__)
WATCHES_KEY = "streamops:guard:watches"
CLAIM_KEY = "streamops:guard:claim:{model}:{version}:{kind}"
# Versions whose recent answers are kept per model (the baselines of the next promotion).
KEPT_VERSIONS = 4
# Labels are read from the feature store this often, not at every judgement.
QUALITY_EVERY_S = 10.0
STREAMS = (PredictionsLogged.stream, PredictionsFailed.stream, ModelPromoted.stream)


@dataclass
class Guard:
    client: aioredis.Redis
    registry: GuardRegistry
    datasets_dir: Path
    store_root: Path
    publish: Callable[[ModelPromoted], Awaitable[Any]]
    metrics: TrainerMetrics
    interval_s: float = 1.0
    clock: Callable[[], float] = time.time
    recent: dict[tuple[str, int], Tally] = field(default_factory=dict)
    watching: dict[str, Watching] = field(default_factory=dict)
    _ids: dict[str, str] = field(default_factory=dict)

    async def run(self) -> None:
        await self.restore()
        self._ids = {stream: await self._last_id(stream) for stream in STREAMS}
        judged = 0.0
        while True:
            try:
                await self.read(block_ms=int(self.interval_s * 1000))
                if self.clock() - judged >= self.interval_s:
                    judged = self.clock()
                    await self.judge_all()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis or the registry away for a moment: next time
                log.warning("the rollout guard failed a pass", exc_info=True)
                await asyncio.sleep(self.interval_s)

    async def _last_id(self, stream: str) -> str:
        """Where to read `stream` from: after its last entry now (the past is not watched)."""
        last: Any = await self.client.xrevrange(stream, count=1)
        return last[0][0].decode() if last else "0-0"

    async def read(self, block_ms: int | None = None) -> int:
        """One read of the three streams; the entries taken in."""
        if not self._ids:
            self._ids = {stream: await self._last_id(stream) for stream in STREAMS}
        reply = await xread_all(self.client, self._ids, count=1000, block_ms=block_ms)
        taken = 0
        for raw_stream, entries in reply:
            stream = raw_stream.decode()
            for entry_id, fields in entries:
                self._ids[stream] = entry_id.decode()
                await self._take(stream, fields)
                taken += 1
        return taken

    async def _take(self, stream: str, fields: Any) -> None:
        body = entry_body(fields)
        try:
            if stream == PredictionsLogged.stream:
                self.answered(PredictionsLogged.model_validate_json(body))
            elif stream == PredictionsFailed.stream:
                self.failed(PredictionsFailed.model_validate_json(body))
            else:
                await self.promoted(ModelPromoted.model_validate_json(body))
        except ValidationError as exc:  # its consumers dead-letter it; the guard looks away
            log.debug("the guard skips a malformed %s entry: %s", stream, exc)

    # --- what versions answer ------------------------------------------------------------------

    def answered(self, entry: PredictionsLogged) -> None:
        self._pair(entry)
        if entry.shadow:
            return  # a challenger's answers reached no client
        now = self.clock()
        for tally in self._tallies(entry.model_name, entry.model_version):
            tally.add(entry, now)

    def _pair(self, entry: PredictionsLogged) -> None:
        """Production's answers and a watched challenger's, for its shadow evidence."""
        for watching in self._of(entry.model_name):
            watch, pairing = watching.watch, watching.pairing
            if pairing is None:
                continue
            if entry.shadow and entry.model_version == watch.version:
                pairing.challenger(entry)
            elif not entry.shadow and entry.model_version == watch.against:
                pairing.production(entry)

    def failed(self, event: PredictionsFailed) -> None:
        now = self.clock()
        for tally in self._tallies(event.model_name, event.model_version):
            tally.add_failed(event.rows, now)

    def _tallies(self, model: str, version: int) -> list[Tally]:
        """Where an answer of `version` counts: its recent tally, the new side of a watch of
        it, and the old side of a canary watch against it (production during the canary)."""
        found = [self._recent(model, version)]
        for watching in self._of(model):
            watch = watching.watch
            if version == watch.version:
                found.append(watching.new)
            elif watch.kind == "canary" and version == watch.against and watching.old:
                found.append(watching.old)
        return found

    def _recent(self, model: str, version: int) -> Tally:
        key = (model, version)
        tally = self.recent.get(key)
        if tally is None:
            tally = self.recent[key] = Tally()
            mine = [k for k in self.recent if k[0] == model]
            for old in mine[:-KEPT_VERSIONS]:
                del self.recent[old]
        return tally

    def _of(self, model: str) -> list[Watching]:
        return [w for w in self.watching.values() if w.watch.model == model]

    # --- what to watch -------------------------------------------------------------------------

    async def promoted(self, event: ModelPromoted) -> None:
        model = event.model_name
        if event.alias == CANARY:
            await self._canary_moved(event)
            return
        if event.alias == CHALLENGER:
            await self._challenger_set(event)
            return
        if event.alias != PRODUCTION:
            return
        canary_watch = self.watching.get(f"{model}|canary")
        if canary_watch is not None and canary_watch.watch.version == event.version:
            await self._end(canary_watch)  # the canary is production now
        current = self.watching.get(f"{model}|promotion")
        if current is not None:
            await self._end(current)  # the version it watched left production
        if event.reason in ("guard", "rollback"):
            return  # back to a version that served before: nothing new to watch
        spec, rule = await anyio.to_thread.run_sync(rule_of, self.datasets_dir, model)
        if not rule.guard:
            return
        now = self.clock()
        since = now - rule.baseline_minutes * 60
        against, old = self._answered_before(model, event, since)
        if old is None or old.rows < rule.min_rows:  # not running then: what the log holds
            old = await anyio.to_thread.run_sync(
                logged_tally, self.store_root, model, against, since, now
            )
        watch = Watch(
            model=model,
            version=event.version,
            against=against,
            kind="promotion",
            started=now,
            until=now + rule.watch_minutes * 60,
        )
        await self._start(Watching(watch, rule, spec, old=old))

    def _answered_before(
        self, model: str, event: ModelPromoted, since: float
    ) -> tuple[int | None, Tally | None]:
        """The version that answered most of the model's requests since `since`, other than
        the one just promoted, and what it answered: what the clients got before. Not always
        the alias's previous version, which may never have served (a version the replicas
        refused). With no traffic seen, the previous version and no baseline."""
        before = {
            version: tally.since(since)
            for (name, version), tally in self.recent.items()
            if name == model and version != event.version
        }
        served = max(before, key=lambda v: before[v].rows, default=None)
        if served is None or before[served].rows == 0:
            return event.previous_version, None
        return served, before[served]

    async def _canary_moved(self, event: ModelPromoted) -> None:
        model = event.model_name
        current = self.watching.get(f"{model}|canary")
        if event.withdrawn:
            if current is not None:
                await self._end(current)
            return
        found = await anyio.to_thread.run_sync(self.registry.canaries)
        percent = found[model].share * 100 if model in found else None
        if current is not None and current.watch.version == event.version:
            current.watch.percent = percent  # a step: the same watch goes on
            await self._save(current.watch)
            return
        if current is not None:
            await self._end(current)
        spec, rule = await anyio.to_thread.run_sync(rule_of, self.datasets_dir, model)
        if not rule.guard:
            return
        minutes = None if rule.steps else rule.watch_minutes
        watch = await self._against_production(event, "canary", minutes)
        watch.percent, watch.stepped = percent, watch.started
        await self._start(Watching(watch, rule, spec, old=Tally()))

    async def _challenger_set(self, event: ModelPromoted) -> None:
        """A version the trainer made a challenger to earn its promotion (reason auto): watch
        its shadow evidence. A challenger set by hand is someone's experiment: not watched."""
        model = event.model_name
        current = self.watching.get(f"{model}|shadow")
        if current is not None and (event.withdrawn or current.watch.version != event.version):
            await self._end(current)
        spec, rule = await anyio.to_thread.run_sync(rule_of, self.datasets_dir, model)
        gate = rule.shadow_first
        if (
            event.withdrawn
            or event.reason != "auto"
            or gate is None
            or f"{model}|shadow" in self.watching
        ):
            return
        watch = await self._against_production(event, "shadow", gate.max_minutes)
        await self._start(Watching(watch, rule, spec, pairing=Pairing()))

    async def _against_production(
        self, event: ModelPromoted, kind: Kind, minutes: float | None
    ) -> Watch:
        """A watch of the event's version against production's, for `minutes` (None: until
        the watch ends otherwise)."""
        model = event.model_name
        production = await anyio.to_thread.run_sync(self.registry.alias, model, PRODUCTION)
        now = self.clock()
        until = None if minutes is None else now + minutes * 60
        return Watch(model=model, version=event.version, against=production, kind=kind,
                     started=now, until=until)  # fmt: skip

    async def _start(self, watching: Watching) -> None:
        watch = watching.watch
        self.watching[watch.key] = watching
        await self._save(watch)
        self.metrics.guard_watching.labels(watch.model, str(watch.version), watch.kind).set(1)
        log.info("guard: watching %s v%d (%s, against %s)", watch.model, watch.version,
                 watch.kind, f"v{watch.against}" if watch.against else "nothing")  # fmt: skip

    async def _save(self, watch: Watch) -> None:
        await self.client.hset(WATCHES_KEY, watch.key, watch.model_dump_json())

    async def _end(self, watching: Watching) -> None:
        watch = watching.watch
        self.watching.pop(watch.key, None)
        await self.client.hdel(WATCHES_KEY, watch.key)
        with contextlib.suppress(KeyError):  # restored after a restart: never set here
            self.metrics.guard_watching.remove(watch.model, str(watch.version), watch.kind)

    async def restore(self) -> None:
        """Go on with the watches a trainer (this one before a restart, or another) left."""
        saved: Any = await self.client.hgetall(WATCHES_KEY)
        for raw in saved.values():
            try:
                watch = Watch.model_validate_json(raw)
            except ValidationError:
                continue
            if watch.key in self.watching:
                continue
            spec, rule = await anyio.to_thread.run_sync(rule_of, self.datasets_dir, watch.model)
            # What was answered before the restart, from the log: the new version since the
            # watch began; the old one before it (a promotion's) or beside it (a canary's).
            before = watch.started - rule.baseline_minutes * 60
            since, until = (
                (watch.started, None) if watch.kind == "canary" else (before, watch.started)
            )
            new, old = await anyio.to_thread.run_sync(self._logged, watch, since, until)
            pairing = Pairing() if watch.kind == "shadow" else None
            self.watching[watch.key] = Watching(
                watch, rule, spec, new=new, old=old, pairing=pairing
            )

    def _logged(self, watch: Watch, since: float, until: float | None) -> tuple[Tally, Tally]:
        new = logged_tally(self.store_root, watch.model, watch.version, watch.started)
        return new, logged_tally(self.store_root, watch.model, watch.against, since, until)

    # --- judging -------------------------------------------------------------------------------

    async def judge_all(self) -> None:
        for watching in list(self.watching.values()):
            await self._judge(watching)

    async def _judge(self, watching: Watching) -> None:
        watch, rule = watching.watch, watching.rule
        now = self.clock()
        if watch.kind == "shadow":
            await self._judge_shadow(watching, now)
            return
        if watching.spec is not None and now - watching.quality_read >= QUALITY_EVERY_S:
            watching.quality_read = now
            watching.quality = await anyio.to_thread.run_sync(live_of, self.store_root, watch)
        gate = watching.spec.training.gate if watching.spec and watching.spec.training else None
        breaches = judge(watching.new, watching.old, rule, quality=watching.quality, gate=gate)
        self._export(watching, breaches)
        if breaches:
            # A breach must last: one slow moment (a cold first batch, a training next door)
            # is no verdict. The figures said are the latest.
            watching.breached_since = watching.breached_since or now
            if now - watching.breached_since >= rule.breach_seconds:
                await self._breached(watching, breaches)
            return
        watching.breached_since = None
        if watch.kind == "canary" and rule.steps:
            if now - watch.stepped >= rule.step_minutes * 60 and watching.new.rows >= rule.min_rows:
                await self._step(watching)
        elif watch.until is not None and now >= watch.until:
            await self._held(watching)

    async def _judge_shadow(self, watching: Watching, now: float) -> None:
        """Promote a challenger on its shadow evidence, or leave it a challenger and say why."""
        watch, rule = watching.watch, watching.rule
        gate, training = rule.shadow_first, watching.spec.training if watching.spec else None
        if gate is None or training is None or watching.pairing is None:
            await self._end(watching)
            return
        if now - watching.quality_read >= QUALITY_EVERY_S:
            watching.quality_read = now
            watching.live = await anyio.to_thread.run_sync(both_live, self.store_root, watch)
        live = None
        if watching.live is not None:
            mine, theirs = (figures.get(training.metric) for figures in watching.live)
            enough = min(f.get("rows", 0.0) for f in watching.live) >= rule.min_labelled_rows
            if enough and mine is not None and theirs is not None:
                live = (mine, theirs)
        higher = METRICS[training.task][training.metric]
        decision = decide(
            watching.pairing, gate, live=live, metric=training.metric, higher_is_better=higher
        )
        if decision.promote is None and (watch.until is None or now < watch.until):
            return
        await self._end(watching)
        outcome = "promoted" if decision.promote else "stays_challenger"
        said = f"{'promoted on shadow evidence' if decision.promote else 'stays challenger'}: "
        event = await anyio.to_thread.run_sync(
            shadow_verdict, self.registry, watch, bool(decision.promote), said + decision.said
        )
        self.metrics.guard_verdicts.labels(watch.model, "shadow", outcome).inc()
        log.info("guard: %s v%d %s%s", watch.model, watch.version, said, decision.said)
        if event is not None:
            self.metrics.promoted(event)
            await self.publish(event)

    def _export(self, watching: Watching, breaches: list[GuardBreach]) -> None:
        watch = watching.watch
        figure = self.metrics.guard_figure
        for breach in breaches:
            labels_ = (watch.model, str(watch.version), breach.check)
            figure.labels(*labels_, "value").set(breach.value)
            figure.labels(*labels_, "threshold").set(breach.threshold)
        new = watching.new
        answered = new.rows + new.failed
        if answered:
            key = (watch.model, str(watch.version))
            figure.labels(*key, "errors", "value").set(new.failed / answered)
            figure.labels(*key, "errors", "threshold").set(watching.rule.max_error_rate)
        if new.rows:
            figure.labels(watch.model, str(watch.version), "latency", "value").set(new.p99())

    async def _breached(self, watching: Watching, breaches: list[GuardBreach]) -> None:
        watch = watching.watch
        await self._end(watching)
        claim = CLAIM_KEY.format(model=watch.model, version=watch.version, kind=watch.kind)
        if not await self.client.set(claim, "1", nx=True, ex=3600):
            return  # another trainer's guard has it
        said = tuple(breaches)
        event = await anyio.to_thread.run_sync(undo, self.registry, watch, said)
        for breach in breaches:
            self.metrics.guard_breaches.labels(watch.model, str(watch.version), breach.check).inc()
        outcome = "rolled_back" if watch.kind == "promotion" else "withdrawn"
        self.metrics.guard_verdicts.labels(watch.model, watch.kind, outcome).inc()
        if event is None:
            log.info("guard: %s v%d breached (%s), but it had left already", watch.model,
                     watch.version, summary(said))  # fmt: skip
            return
        log.warning("guard: %s v%d %s: %s", watch.model, watch.version, outcome.replace("_", " "),
                    summary(said))  # fmt: skip
        self.metrics.promoted(event)
        await self.publish(event)

    async def _held(self, watching: Watching) -> None:
        watch = watching.watch
        await self._end(watching)
        new = watching.new
        minutes = (self.clock() - watch.started) / 60
        said = f"held: watched {watch.kind} {minutes:.1f} min, {new.rows} rows"
        await anyio.to_thread.run_sync(
            self.registry.tag_version, watch.model, watch.version, GUARD_TAG, said
        )
        self.metrics.guard_verdicts.labels(watch.model, watch.kind, "held").inc()
        log.info("guard: %s v%d %s", watch.model, watch.version, said)

    async def _step(self, watching: Watching) -> None:
        """The canary's next step (reaching 100: promoted, which starts a promotion watch)."""
        watch = watching.watch
        higher = [s for s in watching.rule.steps if s > (watch.percent or 0)]
        watch.stepped = self.clock()
        if not higher:
            return
        step = higher[0]
        if step >= 100:
            await self._end(watching)
            event = await anyio.to_thread.run_sync(promote_canary, self.registry, watch)
            outcome = "promoted"
        else:
            event = await anyio.to_thread.run_sync(
                canary, self.registry, watch.model, watch.version, step
            )
            watch.percent = step
            await self._save(watch)
            outcome = "stepped"
        self.metrics.guard_verdicts.labels(watch.model, "canary", outcome).inc()
        log.info("guard: %s canary v%d %s to %g%%", watch.model, watch.version, outcome, step)
        if event is not None:
            await self.publish(event)
