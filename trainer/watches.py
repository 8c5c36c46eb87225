"""What the rollout guard watches (trainer/guarding.py), and what it does about it: the
blocking parts, on the registry and the feature store, each run in a thread by the guard.

Each acts only if the alias is still where the guard watched it: another trainer's guard, or
a person, may have moved it meanwhile, and nothing is undone twice or after such a move.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pyarrow.compute as pc
from pydantic import BaseModel

from shared import labels, predlog
from shared.datasets import DatasetSpec, RolloutSpec, load_spec
from shared.events import GuardBreach, ModelPromoted
from shared.promotion import end_canary, promote, restore
from shared.quality import judge as live_figures
from shared.registry import CANARY, CHALLENGER, GUARD_TAG, PRODUCTION, GuardRegistry
from trainer.evidence import Pairing
from trainer.guard import Tally, summary

Kind = Literal["promotion", "canary", "shadow"]


class Watch(BaseModel):
    """A version being watched (kept in Redis as JSON while it lasts)."""

    model: str
    version: int
    against: int | None  # the version it is compared with: production's before, or during
    kind: Kind
    started: float
    until: float | None  # None: a canary with steps, watched until its last one
    percent: float | None = None  # a canary's share now
    stepped: float = 0.0  # when a canary last stepped (or started)

    @property
    def key(self) -> str:
        return f"{self.model}|{self.kind}"


@dataclass
class Watching:
    watch: Watch
    rule: RolloutSpec
    spec: DatasetSpec | None
    new: Tally = field(default_factory=Tally)
    # A promotion's old version: what it answered before (fixed). A canary's: production's
    # answers over the same window (live).
    old: Tally | None = None
    quality: dict[str, float] | None = None
    quality_read: float = 0.0
    # A challenger's (kind shadow): its answers paired with production's, and both live
    # figures on their labelled rows.
    pairing: Pairing | None = None
    # When the checks began to fail without a pause (None: they pass).
    breached_since: float | None = None
    live: tuple[dict[str, float], dict[str, float]] | None = None


def rule_of(datasets_dir: Path, model: str) -> tuple[DatasetSpec | None, RolloutSpec]:
    """The spec that trains `model` and its rollout rule (the defaults without one)."""
    for path in sorted(datasets_dir.glob("*/spec.yaml")):
        try:
            spec = load_spec(datasets_dir, path.parent.name)
        except Exception:  # the ingestor reports broken specs
            continue
        if spec.training is not None and spec.model_name == model:
            return spec, spec.rollout or RolloutSpec()
    return None, RolloutSpec()


def logged_tally(
    store_root: Path, model: str, version: int | None, since: float, until: float | None = None
) -> Tally:
    """What `version` answered online in [since, until), as the prediction log holds it: the
    figures a guard that was not running then (a restart) could not gather from the stream.
    The log lags the stream by the loggers' flush (2 s by default)."""
    tally = Tally()
    if version is None:
        return tally
    table = predlog.read_log(
        store_root,
        model,
        since=datetime.fromtimestamp(since, UTC),
        until=None if until is None else datetime.fromtimestamp(until, UTC),
        columns=["version", "source", "log_id", "latency_ms", "prediction", "classes"],
    )
    if table.num_rows == 0 or "version" not in table.column_names:
        return tally
    mine = table.filter(
        pc.and_(pc.equal(table["version"], version), pc.equal(table["source"], "online"))
    )
    classifier = mine["classes"].null_count < mine.num_rows
    columns = ("log_id", "latency_ms", "prediction")
    rows = zip(*(mine[name].to_pylist() for name in columns), strict=True)
    # A log entry is one answered batch; its rows are together (the log is read sorted).
    for _, batch in itertools.groupby(rows, key=operator.itemgetter(0)):
        answered = list(batch)
        tally.add_batch(since, answered[0][1], [said for *_, said in answered], classifier)
    return tally


def live_of(store_root: Path, watch: Watch) -> dict[str, float] | None:
    """Live figures of the watched version's rows labelled since the watch began."""
    since = datetime.fromtimestamp(watch.started, UTC)
    joined = labels.read_joined(store_root, watch.model, since)
    if joined.num_rows == 0 or "version" not in joined.column_names:
        return None
    mine = joined.filter(pc.equal(joined["version"], watch.version))
    return live_figures(mine) if mine.num_rows else None


def both_live(store_root: Path, watch: Watch) -> tuple[dict[str, float], dict[str, float]] | None:
    """The challenger's and production's live figures on rows labelled since the watch
    began (None when neither has any)."""
    since = datetime.fromtimestamp(watch.started, UTC)
    found = []
    for shadow, version in ((True, watch.version), (False, watch.against)):
        joined = labels.read_joined(store_root, watch.model, since, shadow=shadow)
        if joined.num_rows == 0 or "version" not in joined.column_names:
            return None
        found.append(live_figures(joined.filter(pc.equal(joined["version"], version))))
    return found[0], found[1]


def undo(
    registry: GuardRegistry, watch: Watch, breaches: tuple[GuardBreach, ...]
) -> ModelPromoted | None:
    """Roll the promotion back, or withdraw the canary, if the alias is still where the
    guard watched it (blocking: the registry)."""
    alias = PRODUCTION if watch.kind == "promotion" else CANARY
    if registry.alias(watch.model, alias) != watch.version:
        return None
    if watch.kind == "promotion":
        event: ModelPromoted | None = None
        if watch.against is not None:
            event = restore(registry, watch.model, watch.version, watch.against, breaches)
        verdict = "rolled back" if event is not None else "breached, nothing to roll back to"
    else:
        event = end_canary(registry, watch.model, "guard", breaches)
        verdict = "withdrawn"
    registry.tag_version(watch.model, watch.version, GUARD_TAG, f"{verdict}: {summary(breaches)}")
    return event


def shadow_verdict(
    registry: GuardRegistry, watch: Watch, promote_it: bool, said: str
) -> ModelPromoted | None:
    if registry.alias(watch.model, CHALLENGER) != watch.version:
        return None  # someone moved or ended it meanwhile
    registry.tag_version(watch.model, watch.version, GUARD_TAG, said)
    if not promote_it:
        return None
    event = promote(registry, watch.model, watch.version, "rollout")
    registry.end_shadow(watch.model)
    return event


def promote_canary(registry: GuardRegistry, watch: Watch) -> ModelPromoted | None:
    if registry.alias(watch.model, CANARY) != watch.version:
        return None
    event = promote(registry, watch.model, watch.version, "rollout")
    registry.end_canary(watch.model)
    return event
