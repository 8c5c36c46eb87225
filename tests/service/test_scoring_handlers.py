"""Batch scoring's handlers (predictor/scoring_app.py: Scorer) with in-memory fakes for the
jobs' state and the publishers, a tiny real model in service, and files in a temporary
directory: score-requested in, chunks, part files, one output and scored or score-rejected
out. No Redis, no MLflow."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from predictor.cache import ModelCache, Served
from predictor.metrics import PredictorMetrics
from predictor.scoring import parts_dir
from predictor.scoring_app import Scorer
from predictor.service import Predictor
from shared.datasets import DatasetSpec, arrow_schema, feature_frame, parse_spec
from shared.events import FeatureStoreInput, ParquetInput, Scored, ScoreRejected, ScoreRequested
from shared.feature_store import QUARANTINE_SCHEMA, FeatureStore
from shared.settings import CommonSettings, IngestorSettings, PredictorSettings
from tests.service.scoring_fakes import FakeJobs, RecordingPublisher
from tests.support.shelf import ModelShelf
from tests.support.toy import TOY_SPEC, toy_frame, toy_served

pytestmark = pytest.mark.anyio

VERSION = 3
Make = Callable[..., IngestorSettings]


@pytest.fixture(scope="module")
def spec() -> DatasetSpec:
    return parse_spec(TOY_SPEC)


@pytest.fixture(scope="module")
def served(spec: DatasetSpec) -> Served:
    return toy_served(spec, VERSION)


class Harness:
    """A Scorer serving model `toy` (`served` in service, if given), and what it published."""

    def __init__(
        self, common: CommonSettings, inbox: Path, spec: DatasetSpec, served: Served | None
    ) -> None:
        self.inbox = inbox
        settings = PredictorSettings(
            common=common, score_roots=[inbox], score_chunk_rows=100, max_inline_rows=50
        )
        cache = ModelCache()
        if served is not None:
            cache.swap(served)
        self.predictor = Predictor(ModelShelf(), {"toy": spec}, cache)
        self.metrics = PredictorMetrics()
        self.store = FeatureStore(common.feature_store_root)
        self.jobs = FakeJobs()
        self.scored = RecordingPublisher()
        self.rejected = RecordingPublisher()
        self.scorer = Scorer(
            self.predictor,
            self.metrics,
            settings,
            self.store,
            self.jobs,
            self.scored,
            self.rejected,
        )

    def batch_rows(self) -> float:
        value = self.metrics.registry.get_sample_value(
            "streamops_predicted_rows_total", {"model": "toy", "path": "batch"}
        )
        return value or 0.0

    async def run_chunks(self) -> None:
        """Every queued chunk, last first: the order replicas finish them in does not matter."""
        for chunk in reversed(self.jobs.queued):
            await self.scorer.on_chunk(chunk)


@pytest.fixture
def harness(make_settings: Make, inbox: Path, spec: DatasetSpec, served: Served) -> Harness:
    return Harness(make_settings().common, inbox, spec, served)


def _expected(served: Served, spec: DatasetSpec, frame: pd.DataFrame) -> list[Any]:
    return list(served.model.predict(feature_frame(spec, frame)))


def _write(path: Path, frame: pd.DataFrame) -> Path:
    # Small row groups: chunks of 100 rows straddle them.
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=64)
    return path


async def test_inline_rows_are_scored_in_one_event_and_the_job_is_done(
    harness: Harness, spec: DatasetSpec, served: Served
) -> None:
    frame = toy_frame(20, seed=1).drop(columns=["label"])
    rows = tuple(frame.to_dict(orient="records"))
    await harness.scorer.on_requested(ScoreRequested(job_id="j1", model_name="toy", rows=rows))
    (event,) = harness.scored.published
    assert isinstance(event, Scored)
    assert (event.job_id, event.model_version, event.rows) == ("j1", VERSION, 20)
    assert event.predictions == tuple(_expected(served, spec, frame))
    assert harness.jobs.jobs["j1"]["status"] == "done"
    assert harness.batch_rows() == 20
    assert not harness.rejected.published


async def test_a_parquet_file_is_planned_into_chunks_pinned_to_the_live_version(
    harness: Harness,
) -> None:
    path = _write(harness.inbox / "customers.parquet", toy_frame(250, seed=2))
    request = ScoreRequested(job_id="j2", model_name="toy", input=ParquetInput(uri=str(path)))
    await harness.scorer.on_requested(request)
    chunks = harness.jobs.queued
    assert [(c.chunk, c.chunks, c.start, c.stop) for c in chunks] == [
        (0, 3, 0, 100),
        (1, 3, 100, 200),
        (2, 3, 200, 250),
    ]
    assert {c.model_version for c in chunks} == {VERSION}
    assert {c.output_path for c in chunks} == {
        str(path.resolve().parent / "customers.scored.parquet")
    }
    job = harness.jobs.jobs["j2"]
    assert (job["status"], job["rows"], job["chunks"]) == ("planned", 250, 3)
    await harness.scorer.on_requested(request)  # delivered again: no second set of chunks
    assert len(harness.jobs.queued) == 3
    assert not harness.scored.published


async def test_chunks_are_scored_and_assembled_into_one_output_in_row_order(
    harness: Harness, spec: DatasetSpec, served: Served
) -> None:
    frame = toy_frame(250, seed=3)
    path = _write(harness.inbox / "customers.parquet", frame)
    await harness.scorer.on_requested(
        ScoreRequested(job_id="j3", model_name="toy", input=ParquetInput(uri=str(path)))
    )
    await harness.run_chunks()
    (event,) = harness.scored.published
    assert isinstance(event, Scored)
    assert (event.job_id, event.rows, event.model_version) == ("j3", 250, VERSION)
    assert event.output_uri is not None
    output = Path(event.output_uri)
    result = pq.read_table(output)
    assert result.column("row").to_pylist() == list(range(250))
    assert result.column("prediction").to_pylist() == _expected(served, spec, frame)
    job = harness.jobs.jobs["j3"]
    assert (job["status"], job["output_uri"]) == ("done", str(output))
    assert not Path(parts_dir(str(output), "j3")).exists()  # tidied up once the job is done
    assert harness.batch_rows() == 250

    await harness.scorer.on_chunk(harness.jobs.queued[0])  # a late copy of a chunk
    assert len(harness.scored.published) == 1
    assert harness.batch_rows() == 250


async def test_a_feature_store_version_is_scored_into_the_stores_scores(
    harness: Harness, spec: DatasetSpec
) -> None:
    table = pa.Table.from_pandas(toy_frame(120, seed=4), schema=arrow_schema(spec))
    with harness.store.stage("toy", table.schema) as staged:
        staged.write(table, QUARANTINE_SCHEMA.empty_table())
        info, _ = harness.store.commit(
            "toy", staged, "hash-1", quarantined_rows=0, source="test", spec_fingerprint="f"
        )
    source = FeatureStoreInput(dataset="toy")
    await harness.scorer.on_requested(ScoreRequested(job_id="j4", model_name="toy", input=source))
    assert {c.input_path for c in harness.jobs.queued} == {
        str(harness.store.data_path("toy", info.version))
    }
    await harness.run_chunks()
    (event,) = harness.scored.published
    assert isinstance(event, Scored)
    assert event.output_uri == str(harness.store.scores_path("toy", info.version, "j4"))
    assert pq.read_table(event.output_uri).num_rows == 120


@pytest.mark.parametrize(
    ("model", "in_service", "why"),
    [("nope", True, "unknown model 'nope'"), ("toy", False, "no version of model 'toy'")],
)
async def test_a_model_not_in_service_is_rejected_with_score_rejected(
    make_settings: Make,
    inbox: Path,
    spec: DatasetSpec,
    served: Served,
    model: str,
    in_service: bool,
    why: str,
) -> None:
    harness = Harness(make_settings().common, inbox, spec, served if in_service else None)
    request = ScoreRequested(job_id="j5", model_name=model, rows=({"a": 1.0, "b": 0.0, "flag": 1},))
    await harness.scorer.on_requested(request)
    (event,) = harness.rejected.published
    assert isinstance(event, ScoreRejected)
    assert (event.job_id, event.model_name) == ("j5", model)
    assert why in event.reason
    assert harness.jobs.jobs["j5"]["status"] == "rejected"
    assert not harness.scored.published
    await harness.scorer.on_requested(request)  # delivered again: refused once only
    assert len(harness.rejected.published) == 1


async def test_a_file_outside_the_score_roots_is_rejected(harness: Harness, tmp_path: Path) -> None:
    path = _write(tmp_path / "elsewhere.parquet", toy_frame(10, seed=5))
    await harness.scorer.on_requested(
        ScoreRequested(job_id="j6", model_name="toy", input=ParquetInput(uri=str(path)))
    )
    (event,) = harness.rejected.published
    assert isinstance(event, ScoreRejected)
    assert "is outside the score roots" in event.reason
    assert not harness.jobs.queued


async def test_a_model_served_from_its_signature_is_scored_inline(harness: Harness) -> None:
    from datetime import UTC, datetime

    from shared.schema import Column, ModelSchema
    from tests.support.catalog import Answers

    schema = ModelSchema(
        model_name="price", source="signature", columns=(Column(name="a", type="float"),)
    )
    model = Answers(lambda f: (f["a"] * 2).to_numpy())
    harness.predictor.cache.swap(Served("price", 5, model, schema, None, datetime.now(UTC)))
    rows = ({"a": 1.5}, {"a": -1.0})
    await harness.scorer.on_requested(ScoreRequested(job_id="j7", model_name="price", rows=rows))
    (event,) = harness.scored.published
    assert isinstance(event, Scored)
    assert (event.model_version, event.predictions) == (5, (3.0, -2.0))


async def test_a_model_not_loaded_here_yet_is_caught_up_before_its_job(
    make_settings: Make, inbox: Path, spec: DatasetSpec, served: Served
) -> None:
    # Its alias was set a moment ago: this replica has not converged since, the job is for it.
    harness = Harness(make_settings().common, inbox, spec, None)
    asked: list[str] = []

    async def catch_up(name: str) -> None:
        asked.append(name)
        harness.predictor.cache.swap(served)

    scorer = dataclasses.replace(harness.scorer, catch_up=catch_up)
    rows = tuple(toy_frame(5, seed=3).drop(columns=["label"]).to_dict(orient="records"))
    await scorer.on_requested(ScoreRequested(job_id="j8", model_name="toy", rows=rows))
    assert asked == ["toy"]
    (event,) = harness.scored.published
    assert isinstance(event, Scored)
    assert event.model_version == VERSION
    assert not harness.rejected.published
