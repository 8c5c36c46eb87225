"""The rollout guard's checks (trainer/guard.py): each breach with its figures, and no verdict
before there is evidence enough."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from shared.datasets import GateSpec, RolloutSpec
from shared.events import PredictionsLogged
from trainer.guard import Tally, judge, prediction_psi, summary

RULE = RolloutSpec(min_rows=100, min_labelled_rows=50)


def _tally(predictions: Sequence[object], *, latency_ms: float = 2.0, batch: int = 10) -> Tally:
    """Answers in batches of `batch` rows, each batch taking `latency_ms`."""
    tally = Tally()
    classes = None if any(isinstance(p, float) for p in predictions) else [0, 1]
    for start in range(0, len(predictions), batch):
        chunk = list(predictions[start : start + batch])
        tally.add(
            PredictionsLogged(
                model_name="churn",
                model_version=1,
                latency_ms=latency_ms,
                requests=[("r", len(chunk))],
                features=None,
                predictions=chunk,
                classes=classes,
            )
        )
    return tally


BALANCED = [0, 1, 0, 0, 1] * 60  # 300 rows, 40% ones


def test_a_version_like_the_old_one_breaches_nothing() -> None:
    assert judge(_tally([1, 0, 0, 1, 0] * 60), _tally(BALANCED), RULE) == []
    assert prediction_psi(_tally([1, 0, 0, 1, 0] * 60), _tally(BALANCED)) == pytest.approx(0.0)


def test_a_constant_answer_is_a_prediction_shift() -> None:
    (breach,) = judge(_tally([1] * 300), _tally(BALANCED), RULE)
    assert breach.check == "prediction_shift"
    assert breach.value > 1  # far over 0.25
    assert breach.threshold == 0.25
    assert "prediction_shift" in summary([breach])


def test_no_verdict_before_enough_rows_on_both_sides() -> None:
    assert judge(_tally([1] * 90), _tally(BALANCED), RULE) == []  # too few new rows
    assert judge(_tally([1] * 300), _tally(BALANCED[:50]), RULE) == []  # too few old ones
    assert judge(_tally([1] * 300), None, RULE) == []  # nothing to compare with


def test_failed_rows_over_the_rate_breach_even_with_nothing_answered() -> None:
    tally = Tally()
    tally.add_failed(150)
    (breach,) = judge(tally, _tally(BALANCED), RULE)
    assert (breach.check, breach.value, breach.threshold) == ("errors", 1.0, 0.01)
    few = _tally(BALANCED)
    few.add_failed(2)  # 2 of 302: under 1%
    assert judge(few, _tally(BALANCED), RULE) == []


def test_a_slow_version_breaches_latency_over_the_ratio_and_the_floor() -> None:
    slow = _tally(BALANCED, latency_ms=80.0, batch=2)  # 150 batches
    assert judge(slow, None, RULE) == []  # a first version: no latency to compare with
    # Fewer than 100 batches on a side: their p99 is their slowest; no verdict.
    assert judge(_tally(BALANCED, latency_ms=80.0), _tally(BALANCED, latency_ms=2.0), RULE) == []
    (breach,) = judge(slow, _tally(BALANCED, latency_ms=2.0, batch=2), RULE)
    assert breach.check == "latency"
    assert breach.value == pytest.approx(80.0)
    assert breach.threshold == 50.0  # 3 x 2 ms is under the floor
    # Three times slower but under the floor: no breach.
    fast = _tally(BALANCED, latency_ms=2.0, batch=2)
    assert judge(_tally(BALANCED, latency_ms=20.0, batch=2), fast, RULE) == []
    # Over the floor, but not three times the old p99: no breach either.
    assert (
        judge(
            _tally(BALANCED, latency_ms=90.0, batch=2),
            _tally(BALANCED, latency_ms=40.0, batch=2),
            RULE,
        )
        == []
    )


def test_regressors_are_compared_in_the_old_versions_deciles() -> None:
    old = _tally([float(i % 100) for i in range(1000)])
    same = _tally([float((i * 7) % 100) for i in range(1000)])
    moved = _tally([float(200 + i % 10) for i in range(1000)])
    assert prediction_psi(same, old) < 0.05
    (breach,) = judge(moved, old, RULE)
    assert breach.check == "prediction_shift"


def test_live_quality_outside_the_gate_breaches_once_labels_are_enough() -> None:
    gate = GateSpec(minimum={"accuracy": 0.7})
    new, old = _tally(BALANCED), _tally(BALANCED)
    low = {"rows": 60.0, "accuracy": 0.4}
    (breach,) = judge(new, old, RULE, quality=low, gate=gate)
    assert (breach.check, breach.value, breach.threshold) == ("live_quality", 0.4, 0.7)
    assert judge(new, old, RULE, quality={"rows": 20.0, "accuracy": 0.4}, gate=gate) == []
    assert judge(new, old, RULE, quality={"rows": 60.0, "accuracy": 0.9}, gate=gate) == []


def test_rollout_steps_must_climb() -> None:
    from pydantic import ValidationError

    assert RolloutSpec(steps=(10, 50, 100)).steps == (10, 50, 100)
    for steps in ((50, 10), (10, 10), (0, 50), (10, 120)):
        with pytest.raises(ValidationError, match="climb"):
            RolloutSpec(steps=steps)


def test_a_baseline_is_the_old_versions_recent_answers_only() -> None:
    tally = Tally()
    early = _tally([0] * 300)
    late = _tally(BALANCED)
    for at, source in ((100.0, early), (700.0, late)):
        for _, latency, said in source.batches:
            entry = PredictionsLogged(
                model_name="churn", model_version=1, latency_ms=latency,
                requests=[("r", len(said))], features=None, predictions=[int(p) for p in said],
                classes=[0, 1],
            )  # fmt: skip
            tally.add(entry, at)
    tally.add_failed(5, 100.0)
    recent = tally.since(600.0)
    assert (recent.rows, recent.failed) == (300, 0)
    assert recent.predictions == late.predictions
    assert (tally.rows, tally.failed) == (600, 5)
