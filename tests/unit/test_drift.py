"""Drift: training references, binning, PSI, the live window and what a replica exports."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from predictor.cache import ModelCache, Served
from predictor.drift import DriftMonitor
from predictor.metrics import PredictorMetrics
from predictor.service import Predictor
from shared.datasets import DatasetSpec, feature_frame, load_spec, spec_schema
from shared.drift import DriftReference, FeatureReference, Window, psi, reference_from
from shared.settings import BUNDLED_DATASETS
from tests.support.shelf import ModelShelf, two_pipelines


@pytest.fixture(scope="module")
def spec() -> DatasetSpec:
    return load_spec(BUNDLED_DATASETS, "churn")


def rows(n: int, seed: int, tenure_shift: int = 0) -> pd.DataFrame:
    """Churn-like feature rows; `tenure_shift` moves one feature's whole distribution."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "tenure_months": rng.integers(0, 72, n) + tenure_shift,
            "monthly_charges": rng.normal(70, 20, n).clip(0),
            "support_calls": rng.poisson(2, n),
            "usage_gb": rng.gamma(2.0, 10.0, n),
            "satisfaction": np.where(rng.random(n) < 0.1, np.nan, rng.uniform(1, 5, n)),
            "plan": rng.choice(["basic", "standard", "premium"], n, p=[0.5, 0.3, 0.2]),
            "autopay": rng.random(n) < 0.6,
        }
    )


@pytest.fixture(scope="module")
def reference(spec: DatasetSpec) -> DriftReference:
    return reference_from(spec, feature_frame(spec, rows(5000, seed=1)))


def test_the_reference_has_every_feature_with_shares_that_add_up(
    spec: DatasetSpec, reference: DriftReference
) -> None:
    assert [f.name for f in reference.features] == [c.name for c in spec.feature_columns]
    assert reference.rows == 5000
    by_name = {f.name: f for f in reference.features}
    tenure = by_name["tenure_months"]
    assert tenure.kind == "numeric"
    assert len(tenure.edges) == 9  # deciles
    assert all(0.08 < share < 0.12 for share in tenure.shares[:-1])  # ~10% per bin
    assert tenure.shares[-1] == 0.0  # no missing tenure
    assert by_name["satisfaction"].shares[-1] == pytest.approx(0.1, abs=0.02)  # missing bin
    plan = by_name["plan"]
    assert plan.kind == "categorical"
    assert plan.categories == ("basic", "standard", "premium")  # most frequent first
    assert len(plan.shares) == 5  # three values, unseen, missing
    assert by_name["autopay"].edges == (1.0,)  # booleans as 0/1: two bins
    for feature in reference.features:
        assert sum(feature.shares) == pytest.approx(1.0)
    # It travels as JSON, with the model.
    assert DriftReference.model_validate(reference.model_dump(mode="json")) == reference


def test_values_fall_in_their_bins_missing_and_unseen_ones_too() -> None:
    numeric = FeatureReference(name="x", kind="numeric", edges=(1.0, 2.0), shares=(0.25,) * 4)
    values = pd.Series([0.5, 1.0, 1.5, 2.0, 9.0, None])
    assert numeric.bin_of(values).tolist() == [0, 1, 1, 2, 2, 3]
    categorical = FeatureReference(
        name="c", kind="categorical", categories=("a", "b"), shares=(0.25,) * 4
    )
    assert categorical.bin_of(pd.Series(["b", "a", "zzz", None])).tolist() == [1, 0, 2, 3]


def test_psi_is_zero_for_the_same_shares_and_large_for_a_shift() -> None:
    shares = (0.25, 0.25, 0.25, 0.25)
    assert psi(shares, np.array([25, 25, 25, 25])) == pytest.approx(0.0)
    assert psi(shares, np.array([10, 20, 30, 40])) == pytest.approx(0.2282, abs=1e-4)
    # An empty bin on one side counts as rare (floored), not infinite.
    assert 1.0 < psi(shares, np.array([100, 0, 0, 0])) < 20.0
    assert np.isnan(psi(shares, np.array([0, 0, 0, 0])))


def test_the_window_slides_and_its_psi_follows_the_live_rows(
    spec: DatasetSpec, reference: DriftReference
) -> None:
    window = Window(reference, size=2000)
    window.observe(feature_frame(spec, rows(1500, seed=2)))
    assert window.rows == 1500
    calm = window.psi()
    assert max(calm.values()) < 0.05
    # Shifted rows push the unshifted ones out of the window (it wraps around its ring).
    for seed in (3, 4):
        window.observe(feature_frame(spec, rows(1500, seed=seed, tenure_shift=40)))
    assert window.rows == 2000
    shifted = window.psi()
    assert shifted["tenure_months"] > 1.0
    assert shifted["monthly_charges"] < 0.05
    # And back: a batch larger than the window keeps only its newest rows.
    window.observe(feature_frame(spec, rows(5000, seed=5)))
    assert window.psi()["tenure_months"] < 0.05


def served_with(reference: DriftReference | None, version: int = 1) -> Served:
    schema = spec_schema(load_spec(BUNDLED_DATASETS, "churn"))
    return Served("churn", version, object(), schema, None, datetime.now(UTC), reference)


def psi_samples(metrics: PredictorMetrics) -> dict[tuple[str, str], float]:
    return {
        (s.labels["version"], s.labels["feature"]): s.value
        for family in metrics.registry.collect()
        if family.name == "streamops_feature_psi"
        for s in family.samples
    }


def test_a_replica_exports_psi_once_its_window_is_full_enough(
    spec: DatasetSpec, reference: DriftReference
) -> None:
    metrics = PredictorMetrics(drift=DriftMonitor(window=1000, min_rows=300))
    served = served_with(reference)
    metrics.drift.observe(served, feature_frame(spec, rows(200, seed=6)))
    assert psi_samples(metrics) == {}  # 200 rows say little: nothing exported yet
    assert (
        metrics.registry.get_sample_value(
            "streamops_drift_window_rows", {"model": "churn", "version": "1"}
        )
        == 200
    )
    metrics.drift.observe(served, feature_frame(spec, rows(200, seed=7, tenure_shift=40)))
    exported = psi_samples(metrics)
    assert set(exported) == {("1", c.name) for c in spec.feature_columns}
    assert exported[("1", "tenure_months")] > 0.25
    # A new version starts an empty window against its own reference.
    metrics.drift.observe(served_with(reference, 2), feature_frame(spec, rows(10, seed=8)))
    assert psi_samples(metrics) == {}
    assert metrics.drift.rows("churn") == 10


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_drift_never_fails_a_prediction(reference: DriftReference) -> None:
    monitor = DriftMonitor()
    monitor.observe(served_with(None), pd.DataFrame({"x": [1]}))  # no reference: nothing
    assert monitor.rows("churn") == 0
    kept = Kept()
    logger = logging.getLogger("predictor.drift")
    logger.addHandler(kept)
    try:
        for _ in range(3):  # rows without the features the reference knows
            monitor.observe(served_with(reference), pd.DataFrame({"x": [1]}))
    finally:
        logger.removeHandler(kept)
    assert monitor.rows("churn") == 0
    warnings = [m for m in kept.messages if "drift of churn v1 not counted" in m]
    assert len(warnings) == 1  # once per version, not per batch


def test_online_predictions_are_counted_against_the_served_versions_reference(
    spec: DatasetSpec,
) -> None:
    first, _ = two_pipelines()
    training = rows(2000, seed=9)
    shelf = ModelShelf(
        models={1: first},
        production=1,
        references={1: reference_from(spec, feature_frame(spec, training)).model_dump()},
    )
    monitor = DriftMonitor(window=500, min_rows=100)
    predictor = Predictor(shelf, {"churn": spec}, ModelCache(), drift=monitor)
    predictor.converge()
    predictor.predict("churn", rows(300, seed=10))
    assert monitor.rows("churn") == 300
    assert max(monitor.psi("churn").values()) < 0.1


def test_request_columns_as_plain_lists_bin_like_the_frame(
    spec: DatasetSpec, reference: DriftReference
) -> None:
    frame = rows(300, seed=12)
    from_frame, from_lists = Window(reference, 1000), Window(reference, 1000)
    from_frame.observe(feature_frame(spec, frame))
    # As JSON brings them: None for missing, booleans as true/false, numbers in text.
    columns = json.loads(frame.to_json(orient="columns"))
    lists = {name: list(values.values()) for name, values in columns.items()}
    lists["support_calls"] = [str(v) for v in lists["support_calls"]]
    assert None in lists["satisfaction"]
    from_lists.observe(lists)
    assert from_lists.rows == 300
    assert from_lists.psi() == from_frame.psi()


def test_small_online_batches_are_gathered_and_none_is_missing_when_read(
    spec: DatasetSpec, reference: DriftReference
) -> None:
    frame = feature_frame(spec, rows(300, seed=13))
    whole, gathered = Window(reference, 1000), Window(reference, 1000, gather=256)
    whole.observe(frame)
    lists = {name: frame[name].tolist() for name in frame.columns}
    for start in range(0, 300, 7):  # 43 batches of at most 7 rows, as requests bring them
        gathered.observe({name: values[start : start + 7] for name, values in lists.items()})
    assert gathered.rows == 300  # 256 binned on the way, the last 44 when read
    assert gathered.psi() == whole.psi()
