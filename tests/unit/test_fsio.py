"""Atomic writes (shared/fsio.py): the whole new file, or the old one untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.fsio import atomic_path, write_text_atomic


def test_a_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "part.parquet"
    target.write_text("old")

    def fail_halfway() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half of it")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        fail_halfway()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["part.parquet"]


def test_the_temporary_file_is_hidden_beside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".out.parquet.")
        tmp.write_text("x")
    assert target.read_text() == "x"
