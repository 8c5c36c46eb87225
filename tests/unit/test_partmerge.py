"""Merging a partition's small parts: readers see every row once before, during and after a
merge, whatever step a crash interrupts, and a part a logger writes again stays unseen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from shared import partmerge, predlog
from shared.events import PredictionsLogged

START = datetime(2026, 12, 5, 9, tzinfo=UTC)


def _part(root: Path, n: int, features: dict[str, list[object]] | None = None) -> Path:
    """The n-th flush of a logger: 3 one-row requests, 2 s after the previous flush."""
    at = START + timedelta(seconds=2 * n)
    event = PredictionsLogged(
        occurred_at=at,
        model_name="m",
        model_version=1,
        latency_ms=1.0,
        requests=[(f"r{n}-{i}", 1) for i in range(3)],
        features=features or {"a": [float(n)] * 3, "b": [n] * 3},
        predictions=[n % 2] * 3,
    )
    entry = _entry(n)
    path = predlog.online_part(root, "m", at.date(), entry, entry)
    predlog.write_part(path, predlog.online_table([(event, entry)]))
    return path


def _rows(root: Path) -> list[tuple[str, int]]:
    table = predlog.read_log(root, "m", columns=["request_id", "row"])
    return sorted(zip(table["request_id"].to_pylist(), table["row"].to_pylist(), strict=True))


def _partition(root: Path) -> Path:
    return predlog.partition(root, "m", START.date())


def test_merged_parts_are_read_once_and_removed_by_the_next_merge(tmp_path: Path) -> None:
    parts = [_part(tmp_path, n) for n in range(20)]
    before = _rows(tmp_path)
    assert len(before) == 60

    done = partmerge.merge(_partition(tmp_path), min_parts=16)

    (merged,) = done.made
    assert (done.replaced, done.removed) == (20, 0)
    assert partmerge.visible(_partition(tmp_path)) == [merged]
    # Still on disk (a reader that listed them a moment ago can open them), but unseen.
    assert all(p.exists() for p in parts)
    assert _rows(tmp_path) == before
    table = predlog.read_log(tmp_path, "m")
    assert table["features"].type.names == ["a", "b"]
    assert table["time"].to_pylist() == sorted(table["time"].to_pylist())

    again = partmerge.merge(_partition(tmp_path), min_parts=16)
    assert (again.made, again.replaced, again.removed) == ([], 0, 20)
    assert not any(p.exists() for p in parts)
    assert _rows(tmp_path) == before


def test_a_part_written_again_after_it_was_merged_stays_unseen(tmp_path: Path) -> None:
    for n in range(16):
        _part(tmp_path, n)
    before = _rows(tmp_path)
    partmerge.merge(_partition(tmp_path), min_parts=16)
    partmerge.merge(_partition(tmp_path), min_parts=16)  # the replaced parts removed
    rewritten = _part(tmp_path, 3)  # a logger that died before its ack writes its batch again
    assert rewritten.exists()
    assert _rows(tmp_path) == before
    assert partmerge.merge(_partition(tmp_path), min_parts=1).removed == 1


def test_a_merge_that_fails_before_its_rename_leaves_the_parts_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = [_part(tmp_path, n) for n in range(16)]
    before = _rows(tmp_path)

    def full_disk(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(partmerge, "_together", full_disk)
    with pytest.raises(OSError, match="No space left"):
        partmerge.merge(_partition(tmp_path), min_parts=16)
    assert partmerge.visible(_partition(tmp_path)) == parts
    assert not list(_partition(tmp_path).glob(".*.tmp"))  # no half-written file left
    assert _rows(tmp_path) == before


def test_few_parts_wait_and_batch_parts_and_other_schemas_stay_apart(tmp_path: Path) -> None:
    for n in range(10):
        _part(tmp_path, n)
    assert partmerge.merge(_partition(tmp_path), min_parts=16).made == []
    for n in range(10, 20):  # a version with one feature more: parts of another schema
        _part(tmp_path, n, {"a": [1.0] * 3, "b": [1] * 3, "c": ["x"] * 3})
    batch = predlog.batch_part(tmp_path, "m", START.date(), "job", 0)
    batch.write_bytes(_part(tmp_path, 99).read_bytes())
    last = predlog.online_part(tmp_path, "m", START.date(), *[_entry(99)] * 2)
    before = _rows(tmp_path)

    done = partmerge.merge(_partition(tmp_path), min_parts=16, max_rows=24)

    # 21 small parts of 3 rows, in name order: 0-7 and 8-9 (the schema changes), 10-17 and
    # 18-19 (the schema changes back), 99 alone: not merged. The batch part is never merged.
    assert (len(done.made), done.replaced) == (4, 20)
    assert set(partmerge.visible(_partition(tmp_path))) == {*done.made, batch, last}
    assert _rows(tmp_path) == before


def _entry(n: int) -> str:
    return f"{int((START + timedelta(seconds=2 * n)).timestamp() * 1000)}-0"


@pytest.mark.anyio
async def test_the_ingestors_merger_merges_the_logs_and_the_labels_partitions(
    tmp_path: Path,
) -> None:
    from ingestor.merging import LogMerger
    from shared import labels
    from tests.support.feedback import labelled

    for n in range(16):
        _part(tmp_path, n)
    for n in range(16):  # a label joiner's batch per label
        labelled(tmp_path, "m", {f"r{n}-0": 1}, START + timedelta(minutes=5, seconds=n))
    joined = labels.read_joined(tmp_path, "m")
    assert joined.num_rows == 16
    before = _rows(tmp_path)

    done = await LogMerger(tmp_path, every_s=600).once()

    assert (len(done.made), done.replaced) == (2, 32)
    assert _rows(tmp_path) == before
    assert (
        labels.read_joined(tmp_path, "m").sort_by("request_id").equals(joined.sort_by("request_id"))
    )
