"""The feature store and batch scoring on a real S3 API (moto's server, started by the
fixtures): a version committed by a conditional put of its record, found again by its hash,
numbers claimed by racing writers without a duplicate, a writer killed between its rows and its
record leaving nothing visible, and a Parquet file scored chunk by chunk into an object."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from predictor import scoring
from shared import feature_store, storage
from shared.datasets import parse_spec
from shared.errors import ScoreInputRejected
from shared.events import ParquetInput
from shared.feature_store import FeatureStore, VersionInfo
from tests.conftest import LocalS3
from tests.support.toy import TOY_SPEC, toy_frame, toy_served

pytestmark = [pytest.mark.integration, pytest.mark.s3]
SCHEMA = pa.schema([("x", pa.int64()), ("label", pa.string())])


def _rows(start: int, count: int) -> pa.Table:
    return pa.table(
        {"x": list(range(start, start + count)), "label": [f"r{i}" for i in range(count)]},
        schema=SCHEMA,
    )


def _commit(store: FeatureStore, table: pa.Table, content_hash: str) -> tuple[VersionInfo, bool]:
    with store.stage("toy", SCHEMA) as staged:
        staged.write(table, feature_store.QUARANTINE_SCHEMA.empty_table())
        return store.commit(
            "toy", staged, content_hash, quarantined_rows=0, source="test", spec_fingerprint="f"
        )


def _objects(store: FeatureStore) -> set[str]:
    """The staged-object prefixes (one per writer) under the dataset."""
    files = storage.files_under(storage.join(store.location, "toy", "objects"))
    return {storage.name(storage.parent(f.path)) for f in files}


def test_a_version_commits_whole_and_a_second_copy_finds_it(s3: LocalS3) -> None:
    store = FeatureStore(s3.prefix("store"))
    store.check()  # moto honours conditional puts, as S3 does
    assert storage.files_under(storage.join(store.location, ".streamops-probe")) == []
    info, created = _commit(store, _rows(0, 100), "h1")
    assert created
    assert (info.version, info.rows) == (1, 100)
    assert info.path.startswith(store.location + "/toy/objects/")
    assert store.read("toy", 1).equals(_rows(0, 100))
    again, created = _commit(store, _rows(0, 100), "h1")  # a redelivered ingest
    assert (again.version, created) == (1, False)
    assert _objects(store) == {storage.name(info.path)}  # the copy's rows were removed
    second, _ = _commit(store, _rows(100, 50), "h2")
    every = store.read("toy", "all")
    assert every.num_rows == 150
    pairs = zip(every.column("version").to_pylist(), every.column("x").to_pylist(), strict=True)
    assert sorted(pairs) == [(1, i) for i in range(100)] + [(2, i) for i in range(100, 150)]
    filesystem, path = storage.resolve(storage.join(store.location, "toy", "manifest.json"))
    with filesystem.open_input_stream(path) as stream:
        manifest = stream.read()
    assert [v["version"] for v in json.loads(manifest)["versions"]] == [1, 2]
    assert [v.version for v in FeatureStore(store.location).versions("toy")] == [1, 2]
    assert second.version == 2


def test_racing_writers_never_share_a_number_nor_duplicate_a_content(s3: LocalS3) -> None:
    store = FeatureStore(s3.prefix("race"))
    start = threading.Barrier(8)
    results: list[tuple[VersionInfo, bool]] = []
    lock = threading.Lock()

    def writer(index: int) -> None:
        # Writers 0-4 have contents of their own; 5-7 all carry the same content.
        content = index if index < 5 else 5
        table = _rows(content * 1000, 10 + content)
        with store.stage("toy", SCHEMA) as staged:
            staged.write(table, feature_store.QUARANTINE_SCHEMA.empty_table())
            start.wait(timeout=30)
            outcome = store.commit("toy", staged, f"h{content}", quarantined_rows=0,
                                   source="race", spec_fingerprint="f")  # fmt: skip
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 8
    versions = store.versions("toy")
    assert [v.version for v in versions] == [1, 2, 3, 4, 5, 6]  # six contents, no gap
    assert sorted(v.content_hash for v in versions) == sorted(f"h{i}" for i in range(6))
    assert sum(created for _, created in results) == 6
    for info in versions:  # each number holds its own writer's rows
        content = int(info.content_hash[1:])
        assert store.read("toy", info.version).equals(_rows(content * 1000, 10 + content))
    assert _objects(store) == {storage.name(v.path) for v in versions}


# A writer that stages its rows, then blocks in the conditional put of its record: the moment
# between the data write and the commit, where the test kills it.
_KILLED_WRITER = """
import sys
import pyarrow as pa
from shared import feature_store

def stuck(location, body):
    print("committing", flush=True)
    sys.stdin.read()
    return True

feature_store._put_if_absent = stuck
store = feature_store.FeatureStore(sys.argv[1])
schema = pa.schema([("x", pa.int64()), ("label", pa.string())])
with store.stage("toy", schema) as staged:
    staged.write(pa.table({"x": [7] * 500, "label": ["k"] * 500}, schema=schema),
                 feature_store.QUARANTINE_SCHEMA.empty_table())
    store.commit("toy", staged, "killed", quarantined_rows=0, source="t", spec_fingerprint="f")
"""


def test_a_writer_killed_between_its_rows_and_its_record_leaves_nothing_visible(
    s3: LocalS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FeatureStore(s3.prefix("crash"))
    first, _ = _commit(store, _rows(0, 20), "h1")
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, store.location],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "committing"
        orphan = _objects(store) - {storage.name(first.path)}
        assert len(orphan) == 1  # its rows are written
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    # Nothing of it is visible: not as a version, not in a read of every version.
    assert [v.version for v in store.versions("toy")] == [1]
    assert store.latest("toy") == first
    assert store.read("toy", "all").num_rows == 20
    assert store.find_by_hash("toy", "killed") is None
    # The next writer takes the next number, and its staging drops the orphan once it is old.
    monkeypatch.setattr(feature_store, "ORPHAN_AGE", timedelta(0))
    second, created = _commit(store, _rows(20, 5), "h2")
    assert (second.version, created) == (2, True)
    assert _objects(store) == {storage.name(first.path), storage.name(second.path)}


def test_a_parquet_object_is_scored_chunk_by_chunk_into_an_object(s3: LocalS3) -> None:
    spec = parse_spec(TOY_SPEC)
    served = toy_served(spec, 4)
    prefix = s3.prefix("score")
    source = storage.join(prefix, "in", "rows.parquet")
    filesystem, path = storage.resolve(source)
    frame = toy_frame(1000, seed=3)
    pq.write_table(pa.Table.from_pandas(frame), path, filesystem=filesystem, row_group_size=128)
    store = FeatureStore(prefix)
    with pytest.raises(ScoreInputRejected, match="outside"):
        scoring.resolve("j1", ParquetInput(uri=source), [], store, ["s3://elsewhere"])
    found, output = scoring.resolve("j1", ParquetInput(uri=source), [], store, [prefix])
    assert (found, output) == (source, storage.join(prefix, "in", "rows.scored.parquet"))
    planned = scoring.inspect(found, output, served.schema)
    ranges = scoring.plan_chunks(planned.rows, 300)
    job = f"job-{uuid.uuid4().hex[:6]}"
    for index, rows in enumerate(ranges):
        scoring.score_chunk(served, found, rows, scoring.part_path(output, job, index))
    assert scoring.assemble(output, job, len(ranges)) == 1000
    scoring.remove_parts(output, job)
    result = pq.read_table(storage.resolve(output)[1], filesystem=filesystem)
    assert result.column("row").to_pylist() == list(range(1000))
    features = frame[["a", "b", "flag"]].astype({"flag": float})
    assert result.column("prediction").to_pylist() == list(served.model.predict(features))
    leftovers = [f.path for f in storage.files_under(storage.join(prefix, "in"))]
    assert sorted(storage.name(p) for p in leftovers) == ["rows.parquet", "rows.scored.parquet"]


def test_a_store_that_ignores_conditional_puts_is_refused(
    s3: LocalS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.errors import ConfigError

    monkeypatch.setattr(feature_store, "_put_if_absent", lambda location, body: True)
    with pytest.raises(ConfigError, match="If-None-Match"):
        FeatureStore(s3.prefix("careless")).check()
