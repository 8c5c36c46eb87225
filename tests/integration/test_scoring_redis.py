"""Batch scoring on real Redis and MLflow, with two replicas in this process: a file job is
split into chunks shared by both and assembled in order; a redelivered request plans nothing
twice; inline rows are answered on `scored`; refusals go to `score-rejected`."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import redis.asyncio as aioredis
import yaml

from ingestor.service import ingest
from predictor.app import build_app
from shared.datasets import DatasetSpec, feature_frame, load_spec
from shared.events import (
    DataArrived,
    DataIngested,
    FeatureStoreInput,
    ParquetInput,
    ScoreChunkRequested,
    ScoreRequested,
)
from shared.feature_store import FeatureStore
from shared.jobs import JobStatus, job_key, job_status
from shared.settings import BUNDLED_DATASETS, CommonSettings, IngestorSettings, PredictorSettings
from tests.support.models import (
    churn_features,
    fit_model,
    in_process_predictions,
    register,
    write_parquet,
)
from tests.support.streams import entries, running
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def _settings(
    redis_db: str, mlflow_url: str, spec_dir: Path, tmp_path: Path, consumer: str
) -> PredictorSettings:
    common = CommonSettings(
        redis_url=redis_db,
        mlflow_tracking_uri=mlflow_url,
        datasets_dir=spec_dir,
        feature_store_root=tmp_path / "store",
        consumer_name=consumer,
        lease_ms=2000,
        claim_interval_ms=100,
    )
    return PredictorSettings(
        common=common,
        converge_s=3600,
        score_roots=[tmp_path / "in"],
        score_chunk_rows=3000,
        max_inline_rows=50,
    )


async def _send(client: aioredis.Redis, event: ScoreRequested) -> None:
    fields: Any = {"__data__": event.model_dump_json()}
    await client.xadd(event.stream, fields)


async def _finished(client: aioredis.Redis, job_id: str) -> JobStatus:
    async def settled() -> JobStatus | None:
        status = await job_status(client, job_id)
        return status if status is not None and status.status in ("done", "rejected") else None

    status = await eventually(settled, timeout=30, what=f"job {job_id} settled")
    assert status is not None
    return status


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The churn spec under a model name of this module's own (the MLflow server is shared)."""
    raw = yaml.safe_load((BUNDLED_DATASETS / "churn" / "spec.yaml").read_text())
    raw["training"]["model_name"] = f"churn-scoring-{uuid.uuid4().hex[:8]}"
    directory = tmp_path_factory.mktemp("datasets")
    (directory / "churn").mkdir()
    (directory / "churn" / "spec.yaml").write_text(yaml.safe_dump(raw))
    return directory


@pytest.fixture(scope="module")
def model(mlflow_url: str, spec_dir: Path) -> tuple[DatasetSpec, Any, int]:
    """Registered once for the module: logging a model costs seconds."""
    spec = load_spec(spec_dir, "churn")
    fitted = fit_model(spec, churn_features(3000, seed=3))
    return spec, fitted, register(mlflow_url, spec, fitted)


async def test_a_file_job_is_shared_by_two_replicas_and_assembled_in_order(
    redis_db: str,
    mlflow_url: str,
    spec_dir: Path,
    tmp_path: Path,
    client: aioredis.Redis,
    model: tuple[DatasetSpec, Any, int],
) -> None:
    spec, fitted, version = model
    name = spec.model_name
    source = write_parquet(tmp_path / "in" / "batch.parquet", churn_features(20_000, seed=9), 4096)
    one = build_app(_settings(redis_db, mlflow_url, spec_dir, tmp_path, "replica-1"))
    two = build_app(_settings(redis_db, mlflow_url, spec_dir, tmp_path, "replica-2"))
    async with running(one), running(two):
        request = ScoreRequested(
            job_id="job-1", model_name=name, input=ParquetInput(uri=str(source))
        )
        await _send(client, request)
        status = await _finished(client, "job-1")
        # The same job again (a producer's retry, a new event id): nothing planned twice.
        again = ScoreRequested(job_id="job-1", model_name=name, input=ParquetInput(uri=str(source)))
        await _send(client, again)

        async def both_handled() -> bool:
            info = await client.xpending(ScoreRequested.stream, "predictor")
            groups: Any = await client.xinfo_groups(ScoreRequested.stream)
            return int(info["pending"]) == 0 and int(groups[0]["entries-read"]) == 2

        await eventually(both_handled, what="the repeated request handled")
    assert status.status == "done"
    assert (status.model_version, status.rows, status.chunks, status.chunks_done) == (
        version,
        20_000,
        7,
        7,
    )
    chunks = await entries(client, ScoreChunkRequested.stream)
    assert len(chunks) == 7
    output = tmp_path / "in" / "batch.scored.parquet"
    assert status.output_uri == str(output.resolve())
    table = pq.read_table(output)
    assert table.column("row").to_pylist() == list(range(20_000))
    assert table.column("prediction").to_pylist() == in_process_predictions(fitted, spec, source)
    assert set(table.column("model_version").to_pylist()) == {version}
    (scored,) = await entries(client, "scored")
    assert (scored["job_id"], scored["rows"], scored["output_uri"]) == (
        "job-1",
        20_000,
        str(output.resolve()),
    )
    assert not list((tmp_path / "in").glob(".*parts"))  # parts tidied away
    # Both replicas did some of the work (one entry per read: neither can take everything).
    consumers: Any = await client.xinfo_consumers(ScoreChunkRequested.stream, "predictor")
    assert {c["name"].decode() for c in consumers} == {"replica-1", "replica-2"}


async def test_inline_rows_feature_store_versions_and_refusals(
    redis_db: str,
    mlflow_url: str,
    spec_dir: Path,
    tmp_path: Path,
    client: aioredis.Redis,
    model: tuple[DatasetSpec, Any, int],
) -> None:
    spec, fitted, version = model
    name = spec.model_name
    settings = _settings(redis_db, mlflow_url, spec_dir, tmp_path, "replica-1")
    ingested = ingest(
        DataArrived(dataset="churn", source=str(BUNDLED_DATASETS / "churn" / "churn.csv")),
        IngestorSettings(common=settings.common, data_roots=[BUNDLED_DATASETS]),
        FeatureStore(settings.common.feature_store_root),
    )
    assert isinstance(ingested, DataIngested)
    frame = churn_features(10, seed=4)
    rows = tuple(json.loads(frame.to_json(orient="records")))
    outside = tmp_path / "elsewhere.parquet"
    write_parquet(outside, frame)
    async with running(build_app(settings)):
        await _send(client, ScoreRequested(job_id="inline", model_name=name, rows=rows))
        await _send(
            client,
            ScoreRequested(job_id="fs", model_name=name, input=FeatureStoreInput(dataset="churn")),
        )
        refused = {
            "outside": ScoreRequested(
                job_id="outside", model_name=name, input=ParquetInput(uri=str(outside))
            ),
            "unknown": ScoreRequested(job_id="unknown", model_name="nope", rows=rows),
            "too-many": ScoreRequested(job_id="too-many", model_name=name, rows=rows * 6),
        }
        for event in refused.values():
            await _send(client, event)
        inline = await _finished(client, "inline")
        from_store = await _finished(client, "fs")
        outcomes = {job: await _finished(client, job) for job in refused}
    (answer,) = [e for e in await entries(client, "scored") if e["job_id"] == "inline"]
    assert answer["predictions"] == [int(p) for p in fitted.predict(feature_frame(spec, frame))]
    assert (answer["model_version"], inline.status, inline.rows) == (version, "done", 10)
    assert from_store.status == "done"
    assert from_store.rows == ingested.rows
    assert from_store.output_uri == str(
        tmp_path / "store" / "scores" / "churn" / f"version={ingested.version}" / "fs.parquet"
    )
    assert pq.read_metadata(from_store.output_uri).num_rows == ingested.rows
    assert {job: s.status for job, s in outcomes.items()} == dict.fromkeys(refused, "rejected")
    reasons = {e["job_id"]: e["reason"] for e in await entries(client, "score-rejected")}
    assert set(reasons) == set(refused)
    assert "outside the score roots" in reasons["outside"]
    assert "unknown model" in reasons["unknown"]
    assert "at most 50" in reasons["too-many"]
    assert outcomes["outside"].error == reasons["outside"]


async def test_a_chunk_that_keeps_failing_fails_its_job(
    redis_db: str,
    mlflow_url: str,
    spec_dir: Path,
    tmp_path: Path,
    client: aioredis.Redis,
    model: tuple[DatasetSpec, Any, int],
) -> None:
    spec, _, version = model
    settings = _settings(redis_db, mlflow_url, spec_dir, tmp_path, "replica-1")
    settings = settings.model_copy(
        update={"common": settings.common.model_copy(update={"max_deliveries": 1})}
    )
    source = write_parquet(tmp_path / "in" / "few.parquet", churn_features(10, seed=5))
    # Pinned to a version that does not exist: loading it fails on every delivery.
    chunk = ScoreChunkRequested(
        job_id="doomed",
        model_name=spec.model_name,
        model_version=version + 100,
        chunk=0,
        chunks=1,
        start=0,
        stop=10,
        input_path=str(source),
        output_path=str(tmp_path / "in" / "few.scored.parquet"),
    )
    await client.hset(job_key("doomed"), mapping={"status": "planned", "chunks": 1})
    fields: Any = {"__data__": chunk.model_dump_json()}
    await client.xadd(chunk.stream, fields)
    async with running(build_app(settings)):
        status = await _finished(client, "doomed")
    assert status.status == "rejected"
    assert status.error is not None
    assert status.error.startswith("chunk 0 failed: gave up after 1 deliveries")
    (letter,) = await entries(client, "{score-chunks}.dlq")
    (refusal,) = await entries(client, "score-rejected")
    assert (letter["stream"], refusal["job_id"]) == ("score-chunks", "doomed")
    assert refusal["reason"] == status.error
