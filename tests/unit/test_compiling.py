"""Compiling fitted models to ONNX: the graph answers as the native model does, row by row, or
the model is refused with a reason (and served natively)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from shared.compiled import CompiledModel
from shared.compiling import NotCompiled, Verdict, check, compile_verified
from shared.datasets import feature_frame, parse_spec, spec_schema
from shared.schema import Column, ModelSchema, input_columns
from trainer.training import pipeline

SPEC = """
name: mixed
target: label
columns:
  - {name: amount, type: float, nullable: true}
  - {name: count, type: int, ge: 0}
  - {name: plan, type: str, allowed: [basic, standard, premium], nullable: true}
  - {name: autopay, type: bool}
  - {name: label, type: int}
training:
  task: %(task)s
  estimator: {name: %(estimator)s, params: %(params)s}
  metric: %(metric)s
"""


def _spec(estimator: str, task: str = "classification", params: str = "{}") -> Any:
    metric = "accuracy" if task == "classification" else "rmse"
    text = SPEC % {"estimator": estimator, "task": task, "params": params, "metric": metric}
    return parse_spec(text, source="test")


def _frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.normal(100, 30, rows)
    count = rng.integers(0, 20, rows)
    plan = rng.choice(["basic", "standard", "premium"], rows).astype(object)
    frame = pd.DataFrame(
        {"amount": amount, "count": count, "plan": plan, "autopay": rng.random(rows) < 0.4}
    )
    frame.loc[::7, "amount"] = np.nan  # missing numbers and missing text, imputed both ways
    frame.loc[::11, "plan"] = None
    score = np.nan_to_num(amount - 100) / 30 + count / 10 + (plan == "premium")
    frame["label"] = (score + rng.normal(0, 0.5, rows) > 1).astype(int)
    frame.loc[:, "value"] = score * 10
    return frame


def _fitted(estimator: str, task: str = "classification", params: str = "{}") -> Any:
    spec = _spec(estimator, task, params)
    frame = _frame(1500)
    target = frame["label"] if task == "classification" else frame["value"]
    x = feature_frame(spec, frame)
    return spec, pipeline(spec).fit(x, target), feature_frame(spec, _frame(600, seed=1))


def _classes(model: Any) -> tuple[Any, ...] | None:
    return tuple(model.classes_) if hasattr(model, "predict_proba") else None


@pytest.mark.parametrize(
    ("estimator", "task", "params"),
    [
        ("HistGradientBoostingClassifier", "classification", "{max_iter: 40}"),
        ("RandomForestClassifier", "classification", "{n_estimators: 30, max_depth: 8}"),
        ("LogisticRegression", "classification", "{}"),
        ("LGBMClassifier", "classification", "{n_estimators: 30, verbose: -1}"),
        ("XGBClassifier", "classification", "{n_estimators: 30}"),
        ("RandomForestRegressor", "regression", "{n_estimators: 20, max_depth: 8}"),
        ("HistGradientBoostingRegressor", "regression", "{max_iter: 40}"),
        ("Ridge", "regression", "{}"),
    ],
)
def test_the_built_in_pipelines_compile_and_answer_as_natively(
    estimator: str, task: str, params: str
) -> None:
    spec, model, rows = _fitted(estimator, task, params)
    classes = _classes(model)
    onnx, verdict = compile_verified(model, spec_schema(spec), rows, classes)
    assert verdict == Verdict(True), verdict.reason
    assert onnx is not None
    compiled = CompiledModel(onnx, classes)
    # Row by row, missing values included: the same labels, the same numbers.
    assert rows["amount"].isna().any()
    assert rows["plan"].isna().any()
    if classes is None:
        np.testing.assert_allclose(
            compiled.predict(rows), model.predict(rows), rtol=1e-5, atol=1e-4
        )
    else:
        assert (compiled.predict(rows) == model.predict(rows)).all()
        np.testing.assert_allclose(
            compiled.predict_proba(rows), model.predict_proba(rows), atol=1e-4
        )


def test_a_bare_estimator_on_numbers_is_fed_one_matrix() -> None:
    from sklearn.ensemble import RandomForestClassifier

    frame = _frame(800).fillna({"amount": 0.0})
    x = frame[["amount", "count"]]
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(x, frame["label"])
    schema = ModelSchema(
        model_name="bare",
        source="signature",
        columns=(Column(name="amount", type="float"), Column(name="count", type="int")),
    )
    onnx, verdict = compile_verified(model, schema, x, tuple(model.classes_))
    assert verdict.verified, verdict.reason
    assert onnx is not None
    compiled = CompiledModel(onnx, tuple(model.classes_))
    assert compiled.layout == "matrix"
    assert (compiled.predict(x) == model.predict(x)).all()


def test_a_step_with_no_converter_is_refused_with_its_name() -> None:
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    frame = _frame(300).fillna({"amount": 0.0})
    x = frame[["amount", "count"]]
    model = Pipeline([("ratio", FunctionTransformer(np.log1p)), ("ridge", Ridge())])
    model.fit(x, frame["value"])
    schema = ModelSchema(
        model_name="custom",
        source="signature",
        columns=(Column(name="amount", type="float"), Column(name="count", type="int")),
    )
    onnx, verdict = compile_verified(model, schema, x, None)
    assert onnx is None
    assert not verdict.verified
    assert "FunctionTransformer" in verdict.reason
    assert verdict.text.startswith("refused: no ONNX conver")


def test_what_is_not_a_scikit_learn_model_is_refused() -> None:
    class Answers:
        def predict(self, frame: pd.DataFrame) -> Any:
            return np.zeros(len(frame))

    schema = ModelSchema(
        model_name="pyfunc", source="signature", columns=(Column(name="x", type="float"),)
    )
    onnx, verdict = compile_verified(Answers(), schema, pd.DataFrame({"x": [1.0]}), None)
    assert onnx is None
    assert "not a scikit-learn-API model" in verdict.reason


def test_a_datetime_column_is_refused() -> None:
    from sklearn.linear_model import Ridge

    schema = ModelSchema(
        model_name="dated",
        source="signature",
        columns=(Column(name="x", type="float"), Column(name="at", type="datetime")),
    )
    model = Ridge().fit(pd.DataFrame({"x": [1.0, 2.0, 3.0]}), [1.0, 2.0, 3.0])
    _, verdict = compile_verified(model, schema, pd.DataFrame({"x": [1.0]}), None)
    assert "datetime" in verdict.reason


def test_a_graph_that_disagrees_with_its_model_is_refused() -> None:
    spec, model, rows = _fitted("LogisticRegression")
    _, other, _ = _fitted("HistGradientBoostingClassifier", params="{max_iter: 5}")
    onnx, verdict = compile_verified(other, spec_schema(spec), rows, _classes(other))
    assert onnx is not None
    assert verdict.verified
    with pytest.raises(NotCompiled, match="differ"):
        check(CompiledModel(onnx, _classes(model)), model, rows, _classes(model))


def test_a_verdict_is_written_as_its_tag_says() -> None:
    assert Verdict(True).text == "verified"
    assert Verdict(False, "no ONNX conversion: X").text == "refused: no ONNX conversion: X"


def test_an_online_batch_of_plain_values_feeds_the_graph_as_its_frame_does() -> None:
    spec, model, rows = _fitted("HistGradientBoostingClassifier", params="{max_iter: 20}")
    classes = _classes(model)
    onnx, _ = compile_verified(model, spec_schema(spec), rows, classes)
    assert onnx is not None
    compiled = CompiledModel(onnx, classes)
    # As JSON brings them: None for a missing value, booleans as they came.
    lists = {c: [None if pd.isna(v) else v for v in rows[c].tolist()] for c in rows.columns}
    lists["autopay"] = [bool(v) for v in lists["autopay"]]
    fed = input_columns(spec_schema(spec), lists)
    np.testing.assert_array_equal(compiled.predict_proba(fed), compiled.predict_proba(rows))
    assert (compiled.predict(fed) == model.predict(rows)).all()


def test_input_columns_fill_an_absent_optional_column_and_refuse_a_required_one() -> None:
    schema = spec_schema(_spec("LogisticRegression"))
    given: dict[str, list[Any]] = {
        "count": [1, 2],
        "plan": ["basic", None],
        "autopay": [True, False],
    }
    assert input_columns(schema, given)["amount"] == [None, None]
    with pytest.raises(KeyError, match="missing input columns"):
        input_columns(schema, {"amount": [1.0]})
