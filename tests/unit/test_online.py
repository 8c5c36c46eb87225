"""The predictor's side of online predictions: several batches in one call, answers cut back
apart, one bad batch isolated, expired and malformed entries."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import pytest

from predictor.cache import ModelCache
from predictor.loader import example_frame
from predictor.online import OnlinePredictor, answer, parse
from predictor.service import Predictor
from shared.datasets import DatasetSpec, feature_frame
from shared.events import PredictionRequested
from shared.wire import Refused, entry_fields
from tests.support.shelf import ModelShelf, two_pipelines


class Counting:
    """A model wrapper that counts predict_proba calls (and otherwise is the model)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def predict_proba(self, frame: pd.DataFrame) -> Any:
        self.calls += 1
        return self.model.predict_proba(frame)


@pytest.fixture(scope="module")
def model() -> Any:
    return two_pipelines()[0]


@pytest.fixture
def predictor(model: Any, churn_spec: DatasetSpec) -> Predictor:
    shelf = ModelShelf(models={1: Counting(model)}, production=1)
    predictor = Predictor(shelf, {"churn": churn_spec}, ModelCache())
    predictor.converge()
    return predictor


def _request(frame: pd.DataFrame, deadline: float | None = None) -> PredictionRequested:
    columns = {name: frame[name].tolist() for name in frame.columns}
    return PredictionRequested(
        model_name="churn",
        reply_to="replies",
        deadline=time.time() + 5 if deadline is None else deadline,
        columns=columns,
    )


def _rows(spec: DatasetSpec, n: int, start: int = 0) -> pd.DataFrame:
    frame = example_frame(spec, n)[[c.name for c in spec.feature_columns]]
    frame["tenure_months"] = range(start, start + n)
    frame["satisfaction"] = 3.0
    return frame


def test_batches_of_one_model_are_predicted_in_one_call_and_cut_back_apart(
    predictor: Predictor, model: Any, churn_spec: DatasetSpec
) -> None:
    first, second = _rows(churn_spec, 3), _rows(churn_spec, 2, start=50)
    served = predictor.cache.get("churn").model
    calls = served.calls
    answers = answer(predictor, [_request(first), _request(second)])
    assert served.calls == calls + 1
    for frame, got in zip((first, second), answers, strict=True):
        expected = model.predict_proba(feature_frame(churn_spec, frame))
        assert got.failure is None
        assert got.model_version == 1
        assert got.probabilities is not None
        assert [p[1] for p in got.probabilities] == pytest.approx(expected[:, 1].tolist())
        assert got.predictions == expected.argmax(axis=1).tolist()
        assert got.classes == [0, 1]


def test_a_bad_batch_fails_alone(predictor: Predictor, churn_spec: DatasetSpec) -> None:
    good = _request(_rows(churn_spec, 2))
    bad = _request(_rows(churn_spec, 2).drop(columns=["plan"]))
    first, second = answer(predictor, [good, bad])
    assert first.failure is None
    assert len(first.predictions) == 2
    assert second.failure == "invalid"
    assert "plan" in (second.error or "")
    assert second.request_id == bad.event_id


def test_nothing_in_service_is_said_so(churn_spec: DatasetSpec) -> None:
    predictor = Predictor(ModelShelf(), {"churn": churn_spec}, ModelCache())
    (got,) = answer(predictor, [_request(_rows(churn_spec, 1))])
    assert got.failure == "no_model"


def test_malformed_entries_are_rejected_with_a_reason(churn_spec: DatasetSpec) -> None:
    rejected = parse("1-0", {b"__data__": b'{"model_name": "churn"}'})
    assert isinstance(rejected, Refused)
    assert "reply_to" in rejected.reason
    ragged = parse(
        "1-1",
        {
            b"__data__": b'{"model_name":"m","reply_to":"r","deadline":1,'
            b'"columns":{"a":[1,2],"b":[1]}}'
        },
    )
    assert isinstance(ragged, Refused)
    assert "differ in length" in ragged.reason
    good = _request(_rows(churn_spec, 1))
    fields = {k.encode(): v for k, v in entry_fields(good).items()}
    assert parse("1-2", fields) == good


def test_expired_batches_are_dropped(predictor: Predictor, churn_spec: DatasetSpec) -> None:
    online = OnlinePredictor(None, predictor, "me", 4, clock=lambda: 1000.0)  # type: ignore[arg-type]
    late = _request(_rows(churn_spec, 1), deadline=999.0)
    on_time = _request(_rows(churn_spec, 1), deadline=1001.0)
    entries = [
        (f"1-{i}", {k.encode(): v for k, v in entry_fields(r).items()})
        for i, r in enumerate((late, on_time))
    ]
    live, rejected = online._sort(entries)
    assert live == [on_time]
    assert rejected == []
