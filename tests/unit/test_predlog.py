"""The prediction log's records: online entries (sampling, failures, features left out), batch
chunks (probabilities as lists, several outputs), partitions by day, retention."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from predictor.predlog import chunk_part, online_entry
from predictor.scoring import part_path, score_chunk, scored_path
from shared import predlog
from shared.datasets import parse_spec
from shared.events import BatchPredicted, Lineage, PredictionRequested, ScoreChunkRequested
from tests.support.toy import TOY_SPEC, toy_frame, toy_served

LINEAGE = Lineage(run_id="run-9", dataset="toy", dataset_version=4, content_hash="abc")


def _request(rows: int, spans: list[tuple[str, int]]) -> PredictionRequested:
    return PredictionRequested(
        model_name="toy",
        reply_to="c",
        deadline=1.0,
        columns={"a": list(range(rows)), "b": [0.5] * rows},
        requests=spans,
    )


def _answer(request: PredictionRequested, failure: str | None = None) -> BatchPredicted:
    rows = request.rows
    if failure is not None:
        return BatchPredicted(
            request_id=request.event_id, model_name="toy", failure="invalid", error=failure
        )
    return BatchPredicted(
        request_id=request.event_id,
        model_name="toy",
        model_version=2,
        predictions=[i % 2 for i in range(rows)],
        probabilities=[[0.4, 0.6]] * rows,
        classes=[0, 1],
    )


def _entry(requests: list[PredictionRequested], answers: list[BatchPredicted], **kw: object):  # type: ignore[no-untyped-def]
    options = {"replica": "r1", "latency_ms": 2.0, "sample": 1.0, "features": True} | kw
    return online_entry(requests, answers, LINEAGE, **options)  # type: ignore[arg-type]


def test_an_online_entry_holds_each_request_s_rows_and_the_version_s_lineage() -> None:
    one, two = _request(3, [("x", 1), ("y", 2)]), _request(2, [])
    failed = _request(1, [("z", 1)])
    entry = _entry([one, two, failed], [_answer(one), _answer(two), _answer(failed, "bad")])
    assert entry is not None
    assert entry.requests == [("x", 1), ("y", 2), (str(two.event_id), 2)]  # failures left out
    assert entry.features == {"a": [0, 1, 2, 0, 1], "b": [0.5] * 5}
    assert entry.predictions == [0, 1, 0, 0, 1]
    table = predlog.online_table([(entry, "5-0")])
    assert table["request_id"].to_pylist() == ["x", "y", "y", str(two.event_id), str(two.event_id)]
    assert table["row"].to_pylist() == [0, 0, 1, 0, 1]  # the row within its request
    assert set(table["dataset_version"].to_pylist()) == {4}
    assert table["features"].to_pylist()[2] == {"a": 2, "b": 0.5}
    assert table["probabilities"].to_pylist()[0] == [0.4, 0.6]
    assert table.column_names[: len(predlog.RECORD_COLUMNS)] == list(predlog.RECORD_COLUMNS)


def test_sampling_is_by_request_id_and_features_can_be_left_out() -> None:
    ids = [uuid.uuid4().hex for _ in range(2000)]
    share = sum(predlog.sampled(i, 0.1) for i in ids) / len(ids)
    assert 0.07 < share < 0.13
    assert all(predlog.sampled(i, 1.0) for i in ids[:10])
    assert not any(predlog.sampled(i, 0.0) for i in ids[:10])
    request = _request(4, [(i, 1) for i in ids[:4]])
    entry = _entry([request], [_answer(request)], sample=0.5, features=False)
    kept = [i for i in ids[:4] if predlog.sampled(i, 0.5)]
    if entry is None:
        assert kept == []
    else:
        assert [rid for rid, _ in entry.requests] == kept
        assert entry.features is None
        assert "features" not in predlog.online_table([(entry, "1-0")]).column_names
    nothing = _request(1, [("only", 1)])
    assert _entry([nothing], [_answer(nothing, "bad")]) is None


def test_a_scored_chunk_is_logged_once_per_row_under_its_job(tmp_path: Path) -> None:
    spec = parse_spec(TOY_SPEC)
    served = replace(toy_served(spec, 3), lineage=LINEAGE)
    source = tmp_path / "in" / "rows.parquet"
    source.parent.mkdir()
    pq.write_table(pa.Table.from_pandas(toy_frame(300, seed=2)), source)
    chunk = ScoreChunkRequested(
        job_id="job-1",
        model_name="toy",
        model_version=3,
        chunk=1,
        chunks=2,
        start=100,
        stop=300,
        input_path=str(source),
        output_path=scored_path(str(source)),
        occurred_at=datetime(2026, 12, 4, 23, 59, tzinfo=UTC),
    )
    part = part_path(scored_path(str(source)), "job-1", 1)
    scored = score_chunk(served, str(source), (100, 300), part)
    store = tmp_path / "store"
    for _ in range(2):  # a redelivered chunk writes the same file again
        path = chunk_part(
            store, served, chunk, scored.inputs, scored.results, latency_ms=3.0, replica="r"
        )
    assert path.parent.name == "date=2026-12-04"
    table = predlog.read_log(store, "toy")
    assert table.num_rows == 200
    assert table["row"].to_pylist() == list(range(100, 300))
    assert set(table["request_id"].to_pylist()) == {"job-1"}
    assert set(table["source"].to_pylist()) == {"batch"}
    probabilities = table["probabilities"].to_pylist()
    assert probabilities[0] == pytest.approx(
        [scored.results["probability_0"][0].as_py(), scored.results["probability_1"][0].as_py()]
    )
    assert table["features"].to_pylist()[0]["a"] == scored.inputs["a"][0].as_py()
    assert set(table["input_uri"].to_pylist()) == {str(source)}
    assert table["prediction"].to_pylist() == scored.results["prediction"].to_pylist()


def test_records_are_split_by_day_and_old_days_pruned(tmp_path: Path) -> None:
    request = _request(1, [("d", 1)])
    tables = []
    for n in (1, 2):
        entry = _entry([request], [_answer(request)])
        assert entry is not None
        stamped = entry.model_copy(update={"occurred_at": datetime(2026, 12, n, 12, tzinfo=UTC)})
        tables.append(predlog.online_table([(stamped, f"{n}-0")]))
    split = predlog.by_day(pa.concat_tables(tables))
    assert sorted(split) == [date(2026, 12, 1), date(2026, 12, 2)]
    for day, table in split.items():
        predlog.write_part(predlog.online_part(tmp_path, "toy", day, "a", "b"), table)
    assert predlog.read_log(tmp_path, "toy").num_rows == 2
    # Only the partitions of the window's days are opened: an unreadable file elsewhere is
    # never touched.
    stray = predlog.partition(tmp_path, "toy", date(2026, 11, 1)) / "part-x-y.parquet"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not parquet")
    since = datetime(2026, 12, 2, tzinfo=UTC)
    assert predlog.read_log(tmp_path, "toy", since=since).num_rows == 1
    until = datetime(2026, 12, 1, 23, tzinfo=UTC)
    window = predlog.read_log(tmp_path, "toy", since=datetime(2026, 12, 1, tzinfo=UTC), until=until)
    assert window.num_rows == 1
    stray.unlink()
    stray.parent.rmdir()
    removed = predlog.prune(tmp_path, keep_days=1, today=date(2026, 12, 2))
    assert [p.name for p in removed] == ["date=2026-12-01"]
    assert predlog.read_log(tmp_path, "toy").num_rows == 1
    assert predlog.prune(tmp_path, keep_days=0) == []
