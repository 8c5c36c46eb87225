"""Training and judging without MLflow: the sample trains a useful model; the gate decides."""

from __future__ import annotations

import pandas as pd
import pytest

from ingestor.service import ingest
from shared.datasets import DatasetSpec, TrainingSpec
from shared.errors import ConfigError
from shared.events import DataArrived
from shared.feature_store import FeatureStore
from shared.settings import IngestorSettings
from trainer import estimators
from trainer.gate import judge
from trainer.training import fit, split


@pytest.fixture
def churn(make_settings: object, churn_spec: DatasetSpec) -> pd.DataFrame:
    settings: IngestorSettings = make_settings()  # type: ignore[operator]
    store = FeatureStore(settings.common.feature_store_root)
    ingest(DataArrived(dataset="churn", source="churn/churn.csv"), settings, store)
    frame: pd.DataFrame = store.read("churn").to_pandas()
    return frame


def test_the_sample_trains_a_model_that_passes_its_gate(
    churn: pd.DataFrame, churn_spec: DatasetSpec
) -> None:
    trained = fit(churn_spec, churn)
    assert set(trained.metrics) == {"accuracy", "f1", "roc_auc", "log_loss"}
    assert trained.metrics["roc_auc"] > 0.75
    assert len(trained.split.x_test) == pytest.approx(len(churn) * 0.2, abs=1)
    assert "customer_id" not in trained.split.x_train.columns
    assert churn_spec.training is not None
    assert judge(churn_spec.training, trained.metrics).passed


def test_a_shuffled_label_trains_a_model_the_gate_refuses(
    churn: pd.DataFrame, churn_spec: DatasetSpec
) -> None:
    degraded = churn.assign(churned=churn["churned"].sample(frac=1, random_state=1).to_numpy())
    trained = fit(churn_spec, degraded)
    assert churn_spec.training is not None
    verdict = judge(churn_spec.training, trained.metrics)
    assert not verdict.passed
    assert any("roc_auc" in r and "< minimum 0.7" in r for r in verdict.reasons)


def _training(**gate: object) -> TrainingSpec:
    return TrainingSpec.model_validate(
        {
            "task": "classification",
            "estimator": {"name": "LogisticRegression"},
            "metric": "roc_auc",
            "gate": gate,
        }
    )


def test_the_champion_must_not_be_beaten_by_more_than_the_margin() -> None:
    training = _training(champion_margin=0.01)
    assert judge(training, {"roc_auc": 0.795}, {"roc_auc": 0.80}, 3).passed
    verdict = judge(training, {"roc_auc": 0.78}, {"roc_auc": 0.80}, 3)
    assert not verdict.passed
    assert "worse than production v3" in verdict.reasons[0]


def test_lower_is_better_metrics_compare_the_other_way() -> None:
    training = TrainingSpec.model_validate(
        {
            "task": "regression",
            "estimator": {"name": "Ridge"},
            "metric": "rmse",
            "gate": {"maximum": {"rmse": 2.0}, "champion_margin": 0.1},
        }
    )
    assert judge(training, {"rmse": 1.05}, {"rmse": 1.0}).passed
    assert not judge(training, {"rmse": 1.2}, {"rmse": 1.0}).passed
    assert not judge(training, {"rmse": 2.5}).passed


def test_a_time_split_holds_out_the_newest_rows(
    churn: pd.DataFrame, churn_spec: DatasetSpec
) -> None:
    assert churn_spec.training is not None
    spec = churn_spec.model_copy(
        update={"training": churn_spec.training.model_copy(update={"split": "time"})}
    )
    parts = split(spec, churn)
    newest_train = churn.loc[parts.x_train.index, "signup_at"].max()
    assert churn.loc[parts.x_test.index, "signup_at"].min() >= newest_train


@pytest.mark.parametrize(
    ("name", "task", "words"),
    [
        ("SVC", "classification", "unknown estimator"),
        ("Ridge", "classification", "is a regression estimator"),
    ],
)
def test_estimators_are_named_from_a_reviewed_list(name: str, task: str, words: str) -> None:
    from shared.datasets import EstimatorSpec

    with pytest.raises(ConfigError, match=words):
        estimators.resolve(EstimatorSpec(name=name), task)  # type: ignore[arg-type]


def test_metrics_must_suit_the_task() -> None:
    with pytest.raises(ValueError, match="not one of"):
        TrainingSpec.model_validate(
            {"task": "regression", "estimator": {"name": "Ridge"}, "metric": "roc_auc"}
        )


def test_train_on_all_takes_every_version_up_to_the_planned_one(
    make_settings: object, churn_spec: DatasetSpec, inbox: object
) -> None:
    from pathlib import Path

    from tests.support.data import churn_rows, write_csv
    from trainer.service import training_frame

    settings: IngestorSettings = make_settings()  # type: ignore[operator]
    store = FeatureStore(settings.common.feature_store_root)
    folder = Path(str(inbox))
    for n, rows in enumerate((100, 200, 300)):
        write_csv(folder / f"v{n}.csv", churn_rows(rows, seed=n))
        ingest(DataArrived(dataset="churn", source=str(folder / f"v{n}.csv")), settings, store)
    assert churn_spec.training is not None
    every = churn_spec.model_copy(
        update={"training": churn_spec.training.model_copy(update={"train_on": "all"})}
    )
    assert len(training_frame(store, every, 2)) == 300
    assert len(training_frame(store, churn_spec, 2)) == 200
    assert "version" not in training_frame(store, every, 3).columns
