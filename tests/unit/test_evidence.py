"""Shadow evidence (trainer/evidence.py): a challenger's rows paired with production's, and
the verdict on them."""

from __future__ import annotations

from shared.datasets import DatasetSpec, RolloutSpec, ShadowGateSpec
from shared.events import PredictionsLogged
from shared.registry import Challenger
from trainer.evidence import KEPT_ANSWERS, Pairing, decide

GATE = ShadowGateSpec(min_rows=100, margin=0.05)


def _entry(
    version: int, ids: list[str], said: list[int], shadow: bool = False
) -> PredictionsLogged:
    return PredictionsLogged(
        model_name="churn",
        model_version=version,
        latency_ms=1.0,
        requests=[(rid, 1) for rid in ids],
        features=None,
        predictions=said,
        shadow=shadow,
    )


def test_rows_are_paired_by_request_and_row_and_counted_once() -> None:
    pairing = Pairing()
    pairing.production(
        PredictionsLogged(
            model_name="churn",
            model_version=1,
            latency_ms=1.0,
            requests=[("a", 2), ("b", 1)],
            features=None,
            predictions=[0, 1, 1],
        )
    )
    pairing.challenger(
        PredictionsLogged(
            model_name="churn",
            model_version=2,
            latency_ms=1.0,
            requests=[("a", 2)],
            features=None,
            predictions=[0, 0],
            shadow=True,
        )
    )
    assert (pairing.rows, pairing.agreeing) == (2, 1)
    pairing.challenger(_entry(2, ["a"], [0], shadow=True))  # paired already: not again
    pairing.challenger(_entry(2, ["zzz"], [0], shadow=True))  # production's not seen
    assert pairing.rows == 2
    assert list(pairing.waiting) == [("b", 0)]


def test_production_answers_wait_bounded() -> None:
    pairing = Pairing()
    ids = [f"r{i}" for i in range(KEPT_ANSWERS + 10)]
    pairing.production(_entry(1, ids, [0] * len(ids)))
    assert len(pairing.waiting) == KEPT_ANSWERS
    assert ("r0", 0) not in pairing.waiting


def test_the_verdict_waits_for_rows_then_judges_agreement_or_live_quality() -> None:
    pairing = Pairing()
    assert decide(pairing, GATE).promote is None
    ids = [f"r{i}" for i in range(200)]
    pairing.production(_entry(1, ids, [0] * 200))
    pairing.challenger(_entry(2, ids, [0] * 192 + [1] * 8, shadow=True))
    agreed = decide(pairing, GATE)
    assert agreed.promote is True
    assert "agreement 0.96 on 200 rows" in agreed.said
    pairing.challenger(_entry(2, [f"x{i}" for i in range(10)], [1] * 10, shadow=True))
    strict = decide(pairing, ShadowGateSpec(min_rows=100, margin=0.01))
    assert strict.promote is False
    # With labels for both, live quality decides, whatever the agreement.
    strict_gate = ShadowGateSpec(min_rows=100, margin=0.01)
    close = decide(pairing, strict_gate, live=(0.80, 0.805), metric="accuracy")
    assert close.promote is True
    assert decide(pairing, strict_gate, live=(0.70, 0.80), metric="accuracy").promote is False
    lower = decide(pairing, GATE, live=(0.9, 0.8), metric="rmse", higher_is_better=False)
    assert lower.promote is False


def test_the_trainer_makes_a_passing_version_a_challenger_when_the_spec_asks_for_evidence(
    churn_spec: DatasetSpec,
) -> None:
    from tests.support.shelf import ModelShelf
    from trainer.service import _promote

    spec = churn_spec.model_copy(
        update={"rollout": RolloutSpec(shadow_first=ShadowGateSpec(sample=0.3))}
    )
    shelf = ModelShelf(models={1: object(), 2: object()}, production=None)
    first = _promote(spec, 1, None, shelf)  # nothing to shadow: production at once
    assert (first.alias, first.version, shelf.production) == ("production", 1, 1)
    second = _promote(spec, 2, 1, shelf)
    assert (second.alias, second.version, second.reason) == ("challenger", 2, "auto")
    assert (shelf.production, shelf.challenger) == (1, Challenger(2, 0.3))
    plain = _promote(churn_spec, 2, 1, shelf)  # no rollout section: the gate decides alone
    assert (plain.alias, shelf.production) == ("production", 2)
