"""The rollout guard on real Redis streams, with the in-memory registry: a bad promotion is
rolled back with its evidence, a good one held; a bad canary is withdrawn, a good one climbs
its steps and is promoted; a restarted guard goes on with the watches it left."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from shared.events import ModelPromoted, PredictionsFailed, PredictionsLogged
from shared.promotion import canary, promote
from shared.registry import GUARD_TAG
from shared.settings import BUNDLED_DATASETS
from shared.wire import entry_fields
from tests.support.shelf import ModelShelf
from trainer.guarding import WATCHES_KEY, Guard
from trainer.metrics import TrainerMetrics

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
MIXED = [0, 1, 0, 0, 1]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _datasets(tmp_path: Path, rollout: dict[str, Any]) -> Path:
    """A datasets dir with the churn spec and the given `rollout` section."""
    spec = yaml.safe_load((BUNDLED_DATASETS / "churn" / "spec.yaml").read_text())
    spec["rollout"] = rollout
    (tmp_path / "datasets" / "churn").mkdir(parents=True)
    (tmp_path / "datasets" / "churn" / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "datasets"


def _guard(
    client: aioredis.Redis, shelf: ModelShelf, tmp_path: Path, rollout: dict[str, Any]
) -> tuple[Guard, list[ModelPromoted], Clock]:
    published: list[ModelPromoted] = []
    clock = Clock()

    async def publish(event: ModelPromoted) -> None:
        published.append(event)
        await client.xadd(event.stream, entry_fields(event))  # type: ignore[arg-type]

    rollout = {"breach_seconds": 0, **rollout}  # at once, unless a test says otherwise
    guard = Guard(client, shelf, _datasets(tmp_path, rollout), tmp_path / "store", publish,
                  TrainerMetrics(), clock=clock)  # fmt: skip
    return guard, published, clock


async def _answer(
    client: aioredis.Redis, version: int, label: Callable[[int], int], rows: int
) -> None:
    """`rows` answers of `version` in batches of ten, as replicas log them."""
    for start in range(0, rows, 10):
        entry = PredictionsLogged(
            model_name="churn",
            model_version=version,
            latency_ms=2.0,
            requests=[(f"v{version}-{start + i}", 1) for i in range(10)],
            features=None,
            predictions=[label(start + i) for i in range(10)],
            classes=[0, 1],
        )
        await client.xadd(entry.stream, entry_fields(entry))  # type: ignore[arg-type]


async def _drain(guard: Guard) -> None:
    while await guard.read(block_ms=None):
        pass


async def test_a_bad_promotion_is_rolled_back_with_its_evidence_and_a_good_one_held(
    client: aioredis.Redis, tmp_path: Path
) -> None:
    shelf = ModelShelf(models={1: object(), 2: object(), 3: object()}, production=1,
                       production_history=[1])  # fmt: skip
    guard, published, clock = _guard(client, shelf, tmp_path, {"min_rows": 100, "watch_minutes": 5})
    await guard.read(block_ms=None)  # from now on
    await _answer(client, 1, lambda i: MIXED[i % 5], 300)
    bad = promote(shelf, "churn", 2, "manual")
    await client.xadd(bad.stream, entry_fields(bad))  # type: ignore[arg-type]
    await _drain(guard)
    assert set(guard.watching) == {"churn|promotion"}
    await _answer(client, 2, lambda i: 1, 50)
    await _drain(guard)
    await guard.judge_all()
    assert published == []  # 50 rows: no verdict yet
    await _answer(client, 2, lambda i: 1, 100)
    await _drain(guard)
    await guard.judge_all()

    (rolled,) = published
    assert (rolled.version, rolled.previous_version, rolled.reason) == (1, 2, "guard")
    (breach,) = rolled.breaches
    assert breach.check == "prediction_shift"
    assert breach.value > breach.threshold == 0.25
    assert shelf.production == 1
    assert shelf.version_tags[2][GUARD_TAG].startswith("rolled back: prediction_shift")
    assert guard.watching == {}
    assert await client.hlen(WATCHES_KEY) == 0
    sample = guard.metrics.registry.get_sample_value(
        "streamops_guard_breaches_total",
        {"model": "churn", "version": "2", "check": "prediction_shift"},
    )
    assert sample == 1
    await _drain(guard)  # its own event comes back: nothing more to watch
    assert guard.watching == {}

    good = promote(shelf, "churn", 3, "manual")
    await client.xadd(good.stream, entry_fields(good))  # type: ignore[arg-type]
    await _drain(guard)
    await _answer(client, 3, lambda i: MIXED[(i + 1) % 5], 300)
    failed = PredictionsFailed(model_name="churn", model_version=3, rows=1)
    await client.xadd(failed.stream, entry_fields(failed))  # type: ignore[arg-type]
    await _drain(guard)
    await guard.judge_all()
    assert len(published) == 1
    clock.now += 5 * 60
    await guard.judge_all()
    assert shelf.production == 3
    assert shelf.version_tags[3][GUARD_TAG].startswith("held: watched promotion 5.0 min, 300 rows")
    assert guard.watching == {}


async def test_a_bad_canary_is_withdrawn_and_a_good_one_climbs_its_steps(
    client: aioredis.Redis, tmp_path: Path
) -> None:
    shelf = ModelShelf(models={1: object(), 2: object(), 3: object()}, production=1,
                       production_history=[1])  # fmt: skip
    rule = {"min_rows": 100, "steps": [10, 50, 100], "step_minutes": 1}
    guard, published, clock = _guard(client, shelf, tmp_path, rule)
    await guard.read(block_ms=None)

    slow = canary(shelf, "churn", 2, 10)
    await client.xadd(slow.stream, entry_fields(slow))  # type: ignore[arg-type]
    await _drain(guard)
    for _ in range(12):
        failed = PredictionsFailed(model_name="churn", model_version=2, rows=10, error="boom")
        await client.xadd(failed.stream, entry_fields(failed))  # type: ignore[arg-type]
    await _answer(client, 1, lambda i: MIXED[i % 5], 300)  # production meanwhile: fine
    await _drain(guard)
    await guard.judge_all()
    (withdrawn,) = published
    assert (withdrawn.alias, withdrawn.version, withdrawn.withdrawn) == ("canary", 2, True)
    assert [b.check for b in withdrawn.breaches] == ["errors"]
    assert shelf.canary is None
    assert shelf.production == 1

    fine = canary(shelf, "churn", 3, 10)
    await client.xadd(fine.stream, entry_fields(fine))  # type: ignore[arg-type]
    await _drain(guard)
    for step in (50, 100):
        await _answer(client, 3, lambda i: MIXED[(i + 2) % 5], 150)
        await _answer(client, 1, lambda i: MIXED[i % 5], 150)
        await _drain(guard)
        clock.now += 61
        await guard.judge_all()
        if step < 100:
            assert shelf.canary is not None
            assert shelf.canary.percent == step
    promoted = published[-1]
    assert (promoted.alias, promoted.version, promoted.reason) == ("production", 3, "rollout")
    assert (shelf.production, shelf.canary) == (3, None)
    await _drain(guard)  # the promotion it made is watched in turn
    assert guard.watching["churn|promotion"].watch.version == 3
    assert guard.watching["churn|promotion"].old is not None  # production's answers before


async def test_a_restarted_guard_goes_on_with_the_watches_left(
    client: aioredis.Redis, tmp_path: Path
) -> None:
    shelf = ModelShelf(models={1: object(), 2: object()}, production=1, production_history=[1])
    guard, published, _ = _guard(client, shelf, tmp_path, {"min_rows": 100})
    await guard.read(block_ms=None)
    moved = promote(shelf, "churn", 2, "manual")
    await client.xadd(moved.stream, entry_fields(moved))  # type: ignore[arg-type]
    await _drain(guard)

    again, published, _ = _guard(client, shelf, tmp_path / "again", {"min_rows": 100})
    await again.restore()
    assert again.watching["churn|promotion"].watch.version == 2
    await again.read(block_ms=None)
    for _ in range(11):
        failed = PredictionsFailed(model_name="churn", model_version=2, rows=10)
        await client.xadd(failed.stream, entry_fields(failed))  # type: ignore[arg-type]
    await _drain(again)
    await again.judge_all()
    (rolled,) = published
    assert (rolled.version, rolled.reason) == (1, "guard")


async def test_the_guard_restores_the_version_that_answered_not_a_refused_alias(
    client: aioredis.Redis, tmp_path: Path
) -> None:
    """v2 was promoted but never served (the replicas refused it; v1 kept answering): a bad v3
    goes back to v1, the version the clients were getting."""
    shelf = ModelShelf(models={1: object(), 2: object(), 3: object()}, production=2,
                       production_history=[1, 2])  # fmt: skip
    guard, published, _ = _guard(client, shelf, tmp_path, {"min_rows": 100})
    await guard.read(block_ms=None)
    await _answer(client, 1, lambda i: MIXED[i % 5], 300)
    bad = promote(shelf, "churn", 3, "manual")
    await client.xadd(bad.stream, entry_fields(bad))  # type: ignore[arg-type]
    await _drain(guard)
    assert guard.watching["churn|promotion"].watch.against == 1
    await _answer(client, 3, lambda i: 0, 150)
    await _drain(guard)
    await guard.judge_all()
    (rolled,) = published
    assert (rolled.version, rolled.previous_version) == (1, 3)
    assert (shelf.production, shelf.production_history) == (1, [1])


async def _pair(client: aioredis.Redis, ids: list[str], production: int, challenger: int,
                agree: Callable[[int], bool]) -> None:  # fmt: skip
    """Production answers `ids`, then the challenger shadows them (agreeing where `agree`)."""
    for start in range(0, len(ids), 10):
        chunk = ids[start : start + 10]
        said = [i % 2 for i in range(start, start + len(chunk))]
        theirs = [s if agree(start + i) else 1 - s for i, s in enumerate(said)]
        for version, answers, shadow in ((production, said, False), (challenger, theirs, True)):
            entry = PredictionsLogged(
                model_name="churn", model_version=version, latency_ms=1.0,
                requests=[(rid, 1) for rid in chunk], features=None, predictions=answers,
                classes=[0, 1], shadow=shadow,
            )  # fmt: skip
            await client.xadd(entry.stream, entry_fields(entry))  # type: ignore[arg-type]


async def test_a_challenger_of_the_trainer_is_promoted_on_its_shadow_evidence_or_stays(
    client: aioredis.Redis, tmp_path: Path
) -> None:
    from shared.promotion import shadow

    shelf = ModelShelf(models={1: object(), 2: object(), 3: object(), 4: object()},
                       production=1, production_history=[1])  # fmt: skip
    rule = {"shadow_first": {"min_rows": 100, "margin": 0.05, "max_minutes": 10}}
    guard, published, clock = _guard(client, shelf, tmp_path, rule)
    await guard.read(block_ms=None)

    hand = shadow(shelf, "churn", 4, 0.5)  # set by hand: someone's experiment, not watched
    await client.xadd(hand.stream, entry_fields(hand))  # type: ignore[arg-type]
    await _drain(guard)
    assert guard.watching == {}

    earned = shadow(shelf, "churn", 2, 0.5, reason="auto")
    await client.xadd(earned.stream, entry_fields(earned))  # type: ignore[arg-type]
    await _drain(guard)
    await _pair(client, [f"a{i}" for i in range(60)], 1, 2, lambda i: True)
    await _drain(guard)
    await guard.judge_all()
    assert published == []  # 60 of 100 rows
    await _pair(client, [f"b{i}" for i in range(60)], 1, 2, lambda i: i % 40 != 0)
    await _drain(guard)
    await guard.judge_all()
    (promoted,) = published
    assert (promoted.alias, promoted.version, promoted.reason) == ("production", 2, "rollout")
    assert (shelf.production, shelf.challenger) == (2, None)
    said = shelf.version_tags[2][GUARD_TAG]
    assert said.startswith("promoted on shadow evidence: agreement 0.9833 on 120 rows"), said

    await _drain(guard)  # its own promotion: a promotion watch starts
    worse = shadow(shelf, "churn", 3, 0.5, reason="auto")
    await client.xadd(worse.stream, entry_fields(worse))  # type: ignore[arg-type]
    await _drain(guard)
    await _pair(client, [f"c{i}" for i in range(120)], 2, 3, lambda i: i % 5 != 0)
    await _drain(guard)
    await guard.judge_all()
    assert len(published) == 1
    assert shelf.production == 2
    assert shelf.challenger is not None  # stays one
    assert shelf.version_tags[3][GUARD_TAG].startswith("stays challenger: agreement 0.8")

    later = shadow(shelf, "churn", 4, 0.5, reason="auto")
    await client.xadd(later.stream, entry_fields(later))  # type: ignore[arg-type]
    await _drain(guard)
    await _pair(client, [f"d{i}" for i in range(20)], 2, 4, lambda i: True)
    await _drain(guard)
    clock.now += 10 * 60
    await guard.judge_all()
    assert shelf.version_tags[4][GUARD_TAG] == "stays challenger: 20 of 100 rows shadowed"
    assert "churn|shadow" not in guard.watching


async def test_a_replica_says_which_version_failed_which_rows(
    client: aioredis.Redis, churn_spec: Any
) -> None:
    """A version whose predict raises is answered 502 and reported on `predict-failures`,
    with its version and rows: the guard's error rate."""
    import time

    from predictor.cache import ModelCache
    from predictor.online import OnlinePredictor
    from predictor.service import Predictor
    from shared.broker import ensure_group
    from shared.events import PredictionRequested
    from shared.wire import entry_body
    from tests.support.shelf import churn_frame, two_pipelines

    class Breaking:
        """The model, until `broken`: then every predict raises."""

        def __init__(self, model: Any) -> None:
            self.model, self.broken = model, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.model, name)

        def predict_proba(self, frame: Any) -> Any:
            if self.broken:
                raise RuntimeError("the forest is on fire")
            return self.model.predict_proba(frame)

    model = Breaking(two_pipelines()[0])
    shelf = ModelShelf(models={1: model}, production=1)
    predictor = Predictor(shelf, {"churn": churn_spec}, ModelCache(), compiles=lambda _: False)
    predictor.converge()
    model.broken = True
    online = OnlinePredictor(client, predictor, "replica-1", 10)
    frame = churn_frame(3, seed=2)[[c.name for c in churn_spec.feature_columns]]
    request = PredictionRequested(
        model_name="churn", reply_to="replies", deadline=time.time() + 30,
        columns={name: frame[name].tolist() for name in frame.columns},
    )  # fmt: skip
    await ensure_group(client, PredictionRequested.stream, "predictor")
    await client.xadd(request.stream, entry_fields(request))  # type: ignore[arg-type]
    assert await online.once(block_ms=100) == 1
    entries: Any = await client.xrange(PredictionsFailed.stream)
    (failed,) = [PredictionsFailed.model_validate_json(entry_body(f)) for _, f in entries]
    assert (failed.model_version, failed.rows, failed.replica) == (1, 3, "replica-1")
    assert "the forest is on fire" in failed.error


async def test_a_restarted_guard_takes_what_it_missed_from_the_prediction_log(
    client: aioredis.Redis, tmp_path: Path
) -> None:
    """The trainer restarts during a watch: the new guard rebuilds both sides from the log
    (the old version's answers before the promotion, the new one's since), and judges at
    once, with no traffic after the restart."""
    from datetime import UTC, datetime

    from shared import predlog

    shelf = ModelShelf(models={1: object(), 2: object()}, production=1, production_history=[1])
    guard, _, clock = _guard(client, shelf, tmp_path, {"min_rows": 100})
    await guard.read(block_ms=None)
    moved = promote(shelf, "churn", 2, "manual")
    await client.xadd(moved.stream, entry_fields(moved))  # type: ignore[arg-type]
    await _drain(guard)
    assert guard.watching["churn|promotion"].old is not None

    def logged(version: int, seconds: float, label: Callable[[int], int]) -> tuple[Any, str]:
        at = datetime.fromtimestamp(clock.now + seconds, UTC)
        entry = PredictionsLogged(
            model_name="churn", model_version=version, latency_ms=2.0, occurred_at=at,
            requests=[(f"v{version}-{seconds}-{i}", 1) for i in range(10)], features=None,
            predictions=[label(i) for i in range(10)], classes=[0, 1],
        )  # fmt: skip
        return entry, f"{version}-{seconds}"

    store = tmp_path / "again" / "store"
    events = [logged(1, -60 + s, lambda i: MIXED[i % 5]) for s in range(30)]
    events += [logged(2, 5 + s, lambda i: 1) for s in range(30)]
    day = datetime.fromtimestamp(clock.now, UTC).date()
    predlog.write_part(predlog.online_part(store, "churn", day, "1-0", "9-0"),
                       predlog.online_table(events))  # fmt: skip

    again, published, later = _guard(client, shelf, tmp_path / "again", {"min_rows": 100})
    later.now = clock.now + 40
    await again.restore()
    watching = again.watching["churn|promotion"]
    assert (watching.new.rows, watching.old.rows if watching.old else 0) == (300, 300)
    await again.judge_all()
    (rolled,) = published
    assert (rolled.version, rolled.reason) == (1, "guard")
    assert rolled.breaches[0].check == "prediction_shift"


async def test_a_breach_must_last_before_the_guard_acts(
    client: aioredis.Redis, tmp_path: Path
) -> None:
    """A check that fails and then passes again undoes nothing; one that keeps failing for
    `breach_seconds` does."""
    shelf = ModelShelf(models={1: object(), 2: object()}, production=1, production_history=[1])
    guard, published, clock = _guard(client, shelf, tmp_path, {"min_rows": 100,
                                                               "breach_seconds": 10})  # fmt: skip
    await guard.read(block_ms=None)
    await _answer(client, 1, lambda i: MIXED[i % 5], 300)
    moved = promote(shelf, "churn", 2, "manual")
    await client.xadd(moved.stream, entry_fields(moved))  # type: ignore[arg-type]
    await _drain(guard)
    for _ in range(15):  # 150 failed rows of 150: every row
        failed = PredictionsFailed(model_name="churn", model_version=2, rows=10)
        await client.xadd(failed.stream, entry_fields(failed))  # type: ignore[arg-type]
    await _drain(guard)
    await guard.judge_all()
    clock.now += 5
    await guard.judge_all()
    assert published == []  # failing for 5 s of 10
    await _answer(client, 2, lambda i: MIXED[i % 5], 20_000)  # it recovers: 150 of 20,150 failed
    await _drain(guard)
    clock.now += 1
    await guard.judge_all()
    assert guard.watching["churn|promotion"].breached_since is None
    for _ in range(3000):  # failing again, for good: 30,150 failed rows of 50,150
        failed = PredictionsFailed(model_name="churn", model_version=2, rows=10)
        await client.xadd(failed.stream, entry_fields(failed))  # type: ignore[arg-type]
    await _drain(guard)
    await guard.judge_all()
    clock.now += 9
    await guard.judge_all()
    assert published == []
    clock.now += 1
    await guard.judge_all()
    (rolled,) = published
    assert [b.check for b in rolled.breaches] == ["errors"]
