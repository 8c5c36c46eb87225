"""What a served model answers, whatever it returns: probabilities for a classifier that
gives them, else one value, one object or one list per row, always JSON-safe; and the same
answers as the columns of a scored file."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest

from predictor.cache import Served
from predictor.outputs import output, output_columns, predict_with
from shared.schema import Column, ModelSchema
from tests.support.catalog import Answers, ab_frame

SCHEMA = ModelSchema(
    model_name="m",
    source="signature",
    columns=(Column(name="a", type="float"), Column(name="b", type="float")),
)


def _served(model: Any, classes: tuple[Any, ...] | None = None) -> Served:
    return Served("m", 1, model, SCHEMA, classes, datetime.now(UTC))


def _answer(make: Any) -> list[Any]:
    prediction = predict_with(_served(Answers(make)), ab_frame(3))
    json.dumps(prediction.predictions)  # JSON-safe, or this raises
    return prediction.predictions


@pytest.mark.parametrize(
    "make",
    [
        lambda f: (f["a"] > 0).to_numpy(),
        lambda f: f["a"] > 0,
        lambda f: pd.DataFrame({"y": f["a"] > 0}),
        lambda f: (f[["a"]] > 0).to_numpy(),
    ],
    ids=["1-D array", "Series", "one-column frame", "one-column matrix"],
)
def test_one_value_per_row(make: Any) -> None:
    frame = ab_frame(3)
    assert _answer(make) == (frame["a"] > 0).tolist()


def test_several_columns_are_one_object_per_row() -> None:
    frame = ab_frame(3)
    got = _answer(
        lambda f: pd.DataFrame({"low": f["a"] - 1, "label": np.where(f["b"] > 0, "x", "y")})
    )
    assert got == [
        {"low": a - 1, "label": "x" if b > 0 else "y"}
        for a, b in zip(frame["a"], frame["b"], strict=True)
    ]


def test_a_matrix_is_one_list_per_row() -> None:
    frame = ab_frame(3)
    got = _answer(lambda f: f[["a", "b"]].to_numpy(dtype=np.float32))
    np.testing.assert_allclose(got, frame[["a", "b"]].to_numpy(), rtol=1e-6)
    assert all(type(v) is float for row in got for v in row)


def test_numpy_scalars_dates_and_objects_become_plain_json() -> None:
    when = pd.Timestamp("2026-01-02T03:04:05", tz="UTC")
    got = _answer(
        lambda f: pd.DataFrame(
            {
                "n": np.arange(len(f), dtype=np.int16),
                "at": [when] * len(f),
                "o": np.array([np.int64(7), "x", None], dtype=object),
            }
        )
    )
    assert got[0] == {"n": 0, "at": "2026-01-02T03:04:05.000Z", "o": 7}
    assert got[2]["o"] is None
    assert type(got[1]["n"]) is int


def test_a_classifier_answers_classes_and_probabilities_from_one_call() -> None:
    from sklearn.linear_model import LogisticRegression

    frame = ab_frame(40)
    model = LogisticRegression().fit(frame, frame["a"] > 0)
    prediction = predict_with(_served(model, tuple(model.classes_)), frame)
    assert prediction.predictions == model.predict(frame).tolist()
    np.testing.assert_allclose(prediction.probabilities or [], model.predict_proba(frame))
    assert prediction.classes == (False, True)


def test_scored_files_get_one_column_per_output() -> None:
    frame = ab_frame(3)
    assert list(output_columns(output(frame["a"].to_numpy()))) == ["prediction"]
    assert list(output_columns(output(frame))) == ["prediction_a", "prediction_b"]
    assert list(output_columns(output(frame.to_numpy()))) == ["prediction_0", "prediction_1"]
    with pytest.raises(TypeError, match="shape"):
        output(np.zeros((2, 2, 2)))
