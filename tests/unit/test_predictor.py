"""The predictor's cache, loader and swaps, with real scikit-learn models and a fake registry."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from predictor.cache import ModelCache
from predictor.loader import example_frame
from predictor.service import Predictor
from shared.datasets import DatasetSpec
from shared.errors import ModelLoadFailed, NoModelInService
from shared.events import ModelPromoted
from tests.support.shelf import ModelShelf, two_pipelines


@pytest.fixture(scope="module")
def fitted() -> tuple[Any, Any]:
    """Two real pipelines (fitting is the slow part: once per module)."""
    return two_pipelines()


@pytest.fixture
def shelf(fitted: tuple[Any, Any]) -> ModelShelf:
    first, second = fitted
    return ModelShelf(models={1: first, 2: second, 3: OSError("artifact is corrupt")}, production=1)


def _promoted(version: int) -> ModelPromoted:
    return ModelPromoted(model_name="churn", version=version, reason="manual")


def test_start_loads_production_and_predicts_a_batch_in_one_call(
    shelf: ModelShelf, churn_spec: DatasetSpec
) -> None:
    predictor = Predictor(shelf, {"churn": churn_spec}, ModelCache())
    (served,) = predictor.converge()
    assert served.version == 1
    rows = example_frame(churn_spec, rows=3)
    result = predictor.predict("churn", rows)
    assert result.model_version == 1
    assert len(result.predictions) == 3
    assert result.probabilities is not None
    assert len(result.probabilities[0]) == 2
    assert predictor.converge() == []  # nothing new: no reload


def test_a_promotion_swaps_and_keeps_the_previous_version(
    shelf: ModelShelf, churn_spec: DatasetSpec
) -> None:
    cache = ModelCache()
    predictor = Predictor(shelf, {"churn": churn_spec}, cache)
    predictor.converge()
    taken = cache.get("churn")  # a request in flight holds this one
    assert predictor.promoted(_promoted(2)) is not None
    assert cache.version("churn") == 2
    assert taken.version == 1
    previous = cache.previous("churn")
    assert previous is not None
    assert previous.version == 1
    assert predictor.promoted(_promoted(2)) is None  # the same event again: nothing to do


def test_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(
    shelf: ModelShelf, churn_spec: DatasetSpec
) -> None:
    cache = ModelCache()
    predictor = Predictor(shelf, {"churn": churn_spec}, cache)
    predictor.converge()
    with pytest.raises(ModelLoadFailed, match="artifact is corrupt"):
        predictor.promoted(_promoted(3))
    assert cache.version("churn") == 1
    assert predictor.predict("churn", example_frame(churn_spec, 1)).model_version == 1


def test_a_model_that_expects_other_columns_is_refused(
    shelf: ModelShelf, churn_spec: DatasetSpec
) -> None:
    from sklearn.linear_model import LogisticRegression

    shelf.models[4] = LogisticRegression().fit(pd.DataFrame({"x": [0.0, 1.0]}), [0, 1])
    predictor = Predictor(shelf, {"churn": churn_spec}, ModelCache())
    with pytest.raises(ModelLoadFailed, match="expects columns"):
        predictor.promoted(_promoted(4))


def test_nothing_in_service_is_a_named_error(churn_spec: DatasetSpec) -> None:
    predictor = Predictor(ModelShelf(), {"churn": churn_spec}, ModelCache())
    assert predictor.converge() == []
    with pytest.raises(NoModelInService):
        predictor.predict("churn", example_frame(churn_spec, 1))


def test_a_prefetched_candidate_is_swapped_in_without_loading_again(
    shelf: ModelShelf, churn_spec: DatasetSpec
) -> None:
    cache = ModelCache()
    predictor = Predictor(shelf, {"churn": churn_spec}, cache)
    predictor.converge()
    assert predictor.stage("churn", 2) is not None
    assert predictor.stage("churn", 2) is None  # staged already
    assert cache.version("churn") == 1  # staged is not served
    loads = len(shelf.loads)
    predictor.promoted(_promoted(2))
    assert cache.version("churn") == 2
    assert len(shelf.loads) == loads
    predictor.promoted(_promoted(1))  # a rollback: the previous version is still loaded
    assert cache.version("churn") == 1
    assert len(shelf.loads) == loads
