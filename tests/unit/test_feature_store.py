"""The feature store: immutable versions, found by hash, readable in one call."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pyarrow as pa
import pytest

from shared.errors import VersionNotFound
from shared.feature_store import QUARANTINE_SCHEMA, FeatureStore

SCHEMA = pa.schema([pa.field("x", pa.int64(), nullable=False), pa.field("y", pa.string())])


def _commit(
    store: FeatureStore, content_hash: str, xs: list[int], bad: int = 0
) -> tuple[int, bool]:
    with store.stage("toy", SCHEMA) as staged:
        quarantine = pa.Table.from_pylist(
            [
                {"row": i, "column": "x", "reason": "bad", "error_type": "t", "value": "?"}
                for i in range(bad)
            ],
            schema=QUARANTINE_SCHEMA,
        )
        staged.write(pa.table({"x": xs, "y": [str(x) for x in xs]}, schema=SCHEMA), quarantine)
        info, created = store.commit(
            "toy", staged, content_hash, quarantined_rows=bad, source="test", spec_fingerprint="f"
        )
    return info.version, created


def test_versions_are_numbered_in_order_and_the_same_hash_makes_none(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    assert _commit(store, "h1", [1, 2]) == (1, True)
    assert _commit(store, "h2", [3]) == (2, True)
    assert _commit(store, "h1", [1, 2]) == (1, False)
    assert [v.version for v in store.versions("toy")] == [1, 2]
    assert not list((tmp_path / "toy" / ".staging").iterdir())


def test_one_version_the_latest_or_all_is_one_call(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    _commit(store, "h1", [1, 2])
    _commit(store, "h2", [3])
    assert store.read("toy", 1).column("x").to_pylist() == [1, 2]
    assert store.read("toy").column("x").to_pylist() == [3]
    everything = store.read("toy", "all").sort_by("x")
    assert everything.column("version").to_pylist() == [1, 1, 2]
    with pytest.raises(VersionNotFound):
        store.read("toy", 7)
    with pytest.raises(VersionNotFound):
        store.read("nothing")


def test_quarantine_sits_beside_its_version_and_is_not_read_as_data(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    version, _ = _commit(store, "h1", [1, 2, 3], bad=2)
    info = store.get("toy", version)
    assert info.quarantine_path is not None
    assert Path(info.quarantine_path).parent == Path(info.path)
    assert store.quarantine("toy", version).num_rows == 2
    assert store.read("toy", "all").num_rows == 3


def test_the_manifest_lists_every_version_with_its_facts(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    _commit(store, "h1", [1, 2], bad=1)
    _commit(store, "h2", [3])
    manifest = json.loads((tmp_path / "toy" / "manifest.json").read_text())
    assert [
        (v["version"], v["content_hash"], v["rows"], v["quarantined_rows"])
        for v in manifest["versions"]
    ] == [(1, "h1", 2, 1), (2, "h2", 1, 0)]
    assert manifest["versions"][0]["columns"][0] == {
        "name": "x",
        "type": "int64",
        "nullable": False,
    }


def test_the_records_say_what_exists_and_the_manifest_only_saves_reading_them(
    tmp_path: Path,
) -> None:
    store = FeatureStore(tmp_path)
    _commit(store, "h1", [1, 2])
    manifest = tmp_path / "toy" / "manifest.json"
    entries = json.loads(manifest.read_text())
    phantom = {**entries["versions"][0], "version": 7, "content_hash": "h7"}
    manifest.write_text(json.dumps({**entries, "versions": [*entries["versions"], phantom]}))
    assert [v.version for v in store.versions("toy")] == [1]  # no record, no version 7
    manifest.write_text("{not json")
    assert [v.content_hash for v in store.versions("toy")] == ["h1"]  # read from the record
    assert _commit(store, "h2", [3]) == (2, True)
    assert [v["version"] for v in json.loads(manifest.read_text())["versions"]] == [1, 2]


def test_a_crashed_writer_leaves_nothing_that_counts(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    leftover = tmp_path / "toy" / ".staging" / "999999999-dead"
    leftover.mkdir(parents=True)
    (leftover / "data.parquet").write_bytes(b"half a file")
    _commit(store, "h1", [1])
    assert not leftover.exists()
    assert [v.version for v in store.versions("toy")] == [1]


def _commit_in_process(root: str, content_hash: str) -> int:
    return _commit(FeatureStore(Path(root)), content_hash, [1])[0]


def test_concurrent_writers_get_distinct_versions_and_share_equal_content(tmp_path: Path) -> None:
    hashes = ["a", "b", "c", "d", "a", "b", "c", "d"]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        versions = pool.starmap(_commit_in_process, [(str(tmp_path), h) for h in hashes])
    store = FeatureStore(tmp_path)
    assert sorted(v.version for v in store.versions("toy")) == [1, 2, 3, 4]
    by_hash = {v.content_hash: v.version for v in store.versions("toy")}
    assert versions == [by_hash[h] for h in hashes]
