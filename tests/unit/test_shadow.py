"""A replica's challengers: loaded when aliased, resampled, dropped with the alias or when
they are production's own version; their answers compared with production's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from predictor.cache import ModelCache
from predictor.service import Predictor
from predictor.shadow import compare
from shared.datasets import DatasetSpec
from shared.errors import InvalidShadow
from shared.promotion import shadow
from shared.registry import CHALLENGER, Challenger
from tests.support.shelf import ModelShelf, two_pipelines


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any]:
    return two_pipelines()


def _predictor(models: tuple[Any, Any], spec: DatasetSpec) -> tuple[Predictor, ModelShelf]:
    shelf = ModelShelf(models={1: models[0], 2: models[1]}, production=1)
    predictor = Predictor(shelf, {"churn": spec}, ModelCache(), shadow_sample=0.1)
    predictor.converge()
    return predictor, shelf


def test_a_challenger_is_loaded_resampled_and_dropped_as_the_registry_says(
    models: tuple[Any, Any], churn_spec: DatasetSpec
) -> None:
    predictor, shelf = _predictor(models, churn_spec)
    assert predictor.aside_changes(CHALLENGER).stale == []

    shelf.challenger = Challenger(2)  # no sample tag: the replica's default
    assert predictor.aside_changes(CHALLENGER).stale == [("churn", 2, 0.1)]
    served = predictor.load_aside(CHALLENGER, "churn", 2, 0.1)
    held = predictor.cache.aside(CHALLENGER, "churn")
    assert held is not None
    assert (held.served, held.share) == (served, 0.1)
    assert predictor.cache.version("churn") == 1  # production untouched
    assert predictor.aside_changes(CHALLENGER).stale == []

    shelf.challenger = Challenger(2, 0.3)
    changes = predictor.aside_changes(CHALLENGER)
    assert (changes.stale, changes.resampled) == ([], [("churn", 0.3)])

    shelf.production = 2  # the challenger was promoted: it shadows nothing now
    predictor.converge()
    assert predictor.aside_changes(CHALLENGER).gone == ["churn"]
    shelf.challenger = None
    shelf.production = 1
    predictor.converge()
    assert predictor.aside_changes(CHALLENGER).gone == ["churn"]
    predictor.end_aside(CHALLENGER, "churn")
    assert predictor.cache.aside(CHALLENGER, "churn") is None


def test_a_challenger_refused_is_not_tried_again_until_aliased_anew(
    models: tuple[Any, Any], churn_spec: DatasetSpec
) -> None:
    from shared.errors import ModelLoadFailed, ModelRefused

    predictor, shelf = _predictor(models, churn_spec)
    shelf.models[3] = ModelRefused("not for serving")
    shelf.challenger = Challenger(3, 0.5)
    with pytest.raises(ModelLoadFailed):
        predictor.load_aside(CHALLENGER, "churn", 3, 0.5)
    assert predictor.aside_changes(CHALLENGER).stale == []
    assert predictor.cache.aside(CHALLENGER, "churn") is None
    assert predictor.refused("churn") is None  # production's own refusals are apart
    shelf.challenger = Challenger(2, 0.5)
    assert predictor.aside_changes(CHALLENGER).stale == [("churn", 2, 0.5)]


def test_setting_a_challenger_refuses_production_itself_and_bad_samples() -> None:
    shelf = ModelShelf(models={1: object(), 2: object()}, production=1)
    with pytest.raises(InvalidShadow, match="in production"):
        shadow(shelf, "churn", 1, 0.2)
    with pytest.raises(InvalidShadow, match=r"\(0, 1\]"):
        shadow(shelf, "churn", 2, 0)
    event = shadow(shelf, "churn", 2, 0.2)
    assert (event.alias, event.version, event.previous_version) == ("challenger", 2, None)
    assert shelf.challenger == Challenger(2, 0.2)
    assert shadow(shelf, "churn", 2, 0.2).event_id == event.event_id  # said again: the same


def test_answers_are_compared_as_labels_or_as_values() -> None:
    labels = compare([0, 1, 1, "yes"], [0, 0, 1, "yes"])
    assert (labels.rows, labels.agreeing, labels.difference) == (4, 3, 0.0)
    values = compare([1.5, 2.0, 4.0], [1.0, 2.5, 4.0])
    assert (values.rows, values.agreeing) == (3, 0)
    assert values.difference == pytest.approx(1.0)


def test_the_score_shift_is_a_psi_over_production_deciles() -> None:
    from predictor.shadow import MIN_SCORES, ScoreWindow, scores

    rng = np.random.default_rng(3)
    champion = rng.random(2000)
    assert scores([0, 1], [[0.3, 0.7], [0.9, 0.1]]).tolist() == [0.7, 0.1]
    assert scores([1.5, 2.0], None).tolist() == [1.5, 2.0]
    assert scores(["a", "b"], None) is None
    alike, moved = ScoreWindow(), ScoreWindow()
    alike.add(champion[: MIN_SCORES - 1], rng.random(MIN_SCORES - 1))
    assert alike.psi() is None  # too few rows to say
    alike.add(champion, rng.random(2000))
    moved.add(champion, champion**4)  # pushed towards 0
    same, shifted = alike.psi(), moved.psi()
    assert same is not None
    assert shifted is not None
    assert same < 0.05
    assert shifted > 0.25
