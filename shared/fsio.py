"""Durable file writes: fsync, and writing a file whole or not at all.

A rename makes a write atomic (a reader sees the old file or the new one, never half of
either), and the fsyncs make it durable: the file's bytes before the rename, the directory
entry after it. Services ack an event only once its effect is durable, so both are needed.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush `path`'s content to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush the entries of directory `path` (a rename or a new file in it) to the disk."""
    fsync_file(path)  # the same call: a directory opened read-only can be fsynced on POSIX


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on a clean exit it is fsynced and renamed
    onto `path`, and the directory fsynced. On an error `path` is untouched and the
    temporary file removed."""
    # Hidden, and unique per process and call: two writers never share a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text`, whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
