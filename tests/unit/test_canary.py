"""Canaries: a replica loads the aliased version beside production and answers the batches
meant for it; the gateway routes by a stable hash of the routing key, and only to a canary
that every replica of the model holds."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.canary import position, target
from gateway.fleet import Warned, agreed_canaries, parse_beat
from predictor.cache import ModelCache
from predictor.online import answer
from predictor.service import Predictor
from shared.datasets import DatasetSpec
from shared.errors import InvalidCanary
from shared.events import PredictionRequested
from shared.promotion import canary, end_canary
from shared.registry import CANARY, Canary
from tests.support.shelf import ModelShelf, churn_frame, two_pipelines


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any]:
    return two_pipelines()


def _batch(rows: dict[str, list[Any]], version: int | None) -> PredictionRequested:
    return PredictionRequested(
        model_name="churn", reply_to="r", deadline=0, columns=rows, target=version
    )


def test_a_replica_answers_a_canarys_batches_with_it_and_the_rest_with_production(
    models: tuple[Any, Any], churn_spec: DatasetSpec
) -> None:
    shelf = ModelShelf(models={1: models[0], 2: models[1]}, production=1)
    predictor = Predictor(shelf, {"churn": churn_spec}, ModelCache())
    predictor.converge()
    frame = churn_frame(20, seed=9)
    features = [c.name for c in churn_spec.feature_columns]
    rows = {c: frame[c].tolist() for c in features}

    shelf.canary = Canary(2, 25)
    assert predictor.aside_changes(CANARY).stale == [("churn", 2, 0.25)]
    predictor.load_aside(CANARY, "churn", 2, 0.25)
    loads = len(shelf.loads)
    # Asked again (an event and a converge at once): held already, not loaded twice.
    assert predictor.load_aside(CANARY, "churn", 2, 0.25) is None
    assert len(shelf.loads) == loads
    assert predictor.aside_changes(CANARY).stale == []
    (to_canary,) = answer(predictor, [_batch(rows, 2)])
    (to_production,) = answer(predictor, [_batch(rows, None)])
    assert (to_canary.model_version, to_production.model_version) == (2, 1)
    assert to_canary.predictions == models[1].predict(frame[features]).tolist()
    assert predictor.cache.lineage("churn", 2).dataset_version == 2  # logged as the canary's

    shelf.canary = Canary(2)  # no percent tag: the default share
    assert predictor.aside_changes(CANARY).resampled == [("churn", 0.1)]
    shelf.canary = None
    assert predictor.aside_changes(CANARY).gone == ["churn"]
    predictor.end_aside(CANARY, "churn")
    # Routed a moment before the canary ended: production answers, and says so.
    (late,) = answer(predictor, [_batch(rows, 2)])
    assert late.model_version == 1


def test_setting_a_canary_refuses_production_itself_and_bad_percents() -> None:
    shelf = ModelShelf(models={1: object(), 2: object()}, production=1)
    with pytest.raises(InvalidCanary, match="in production"):
        canary(shelf, "churn", 1, 10)
    with pytest.raises(InvalidCanary, match=r"\(0, 100\]"):
        canary(shelf, "churn", 2, 150)
    assert end_canary(shelf, "churn") is None  # none to end
    event = canary(shelf, "churn", 2, 10)
    assert (event.alias, event.version, event.withdrawn) == ("canary", 2, False)
    assert shelf.canary == Canary(2, 10)
    ended = end_canary(shelf, "churn", "guard")
    assert ended is not None
    assert (ended.alias, ended.version, ended.withdrawn, ended.reason) == (
        "canary",
        2,
        True,
        "guard",
    )
    assert shelf.canary is None


def test_routing_is_stable_per_key_and_shares_the_keys_as_asked() -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    routed = [target((7, 0.1), key) for key in keys]
    assert set(routed) == {7, None}
    assert sum(r == 7 for r in routed) / len(keys) == pytest.approx(0.1, abs=0.01)
    assert [target((7, 0.1), key) for key in keys[:500]] == routed[:500]  # the same again
    assert target(None, "user-1") is None
    assert all(0 <= position(key) < 1 for key in keys[:100])
    # A larger share keeps every key a smaller one routed: stepping up moves no one back.
    assert all(target((7, 0.5), k) == 7 for k, r in zip(keys, routed, strict=True) if r == 7)


def test_the_gateway_routes_to_a_canary_only_when_every_replica_holds_it() -> None:
    warn = Warned()

    def beat(replica: str, canaries: Any, models: dict[str, int] | None = None) -> Any:
        payload = {"models": models or {"churn": 1}, "canaries": canaries}
        return parse_beat(replica, payload, warn)

    both = {
        "a": beat("a", {"churn": [2, 0.1]}, {"churn": 1, "rentals": 4}),
        "b": beat("b", {"churn": [2, 0.1]}),
    }
    assert agreed_canaries(both) == {"churn": (2, 0.1)}
    loading = {**both, "c": beat("c", {})}
    assert agreed_canaries(loading) == {}
    other_share = {**both, "b": beat("b", {"churn": [2, 0.5]})}
    assert agreed_canaries(other_share) == {}
    elsewhere = {**both, "c": beat("c", {}, {"rentals": 4})}  # c does not serve churn
    assert agreed_canaries(elsewhere) == {"churn": (2, 0.1)}
    broken = beat("d", {"churn": "v2", "rentals": [4, 3.0]})
    assert broken.canaries == {}
    assert len(warn.said) == 2
    assert beat("e", None).canaries == {}  # an older replica says nothing of canaries
