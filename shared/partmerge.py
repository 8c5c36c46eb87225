"""Merging the small part files of a date partition (the prediction log's, the labels'),
with no row ever shown twice or lost.

A logger writes one part per flush: about 43,000 a day under steady traffic, and reading a
window opens every part of its days (3,000 parts took 5.6 s to read here, whatever the window).
So the loggers merge them: `part-merged-<digest>.parquet` holds the rows of the parts it
replaces and names them in its Parquet metadata (`streamops.replaces`), and readers skip every
part that a merged file of the same partition names (`visible`). Hence:

- a crash before the merged file is renamed into place leaves the parts as they were;
- once it is there, the parts it names are invisible: a crash before they are removed
  leaves files that no reader sees, and a logger that writes one of them again after a crash
  (the same name, the same rows) writes a file that no reader sees;
- the replaced parts are removed by the next merge of the partition, not at once, so a reader
  that listed them just before can still open them;
- mergers of one partition hold its lock, so no two merged files hold the same row.

Batch-scoring parts (`part-batch-*`, one per 100,000-row chunk) and merged files are not
merged again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shared.fsio import atomic_path, fsync_dir

MERGED = "part-merged-"
BATCH = "part-batch-"
REPLACES = b"streamops.replaces"
LOCK = ".merge.lock"
ROW_GROUP = 65_536


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """What a part dictionary-encodes: what repeats (labels, models, lineage), not row ids,
    times, latencies, probabilities or features."""
    unique = ("row", "time", "latency_ms", "probabilities", "features")
    return [f.name for f in schema if f.name not in unique]


def visible(partition: Path) -> list[Path]:
    """The partition's parts that readers take: every part but those a merged file replaces."""
    parts = sorted(partition.glob("part-*.parquet"))
    replaced = _replaced(parts)
    return [p for p in parts if p.name not in replaced]


@dataclass(frozen=True)
class Merged:
    made: list[Path]  # the merged files written
    replaced: int  # the parts they hold
    removed: int  # parts replaced by an earlier merge, removed now


def merge(partition: Path, *, min_parts: int = 16, max_rows: int = 1_000_000) -> Merged:
    """Merge the partition's small parts when it has at least `min_parts`, into files of at
    most `max_rows` rows (parts of one schema each); remove what earlier merges replaced."""
    with _locked(partition):
        parts = sorted(partition.glob("part-*.parquet"))
        replaced = _replaced(parts)
        leftovers = [p for p in parts if p.name in replaced]
        for path in leftovers:
            path.unlink(missing_ok=True)
        if leftovers:
            fsync_dir(partition)
        small = [
            p for p in parts if p.name not in replaced and not p.name.startswith((MERGED, BATCH))
        ]
        made: list[Path] = []
        count = 0
        if len(small) >= min_parts:
            for group in _groups(small, max_rows):
                if len(group) > 1:
                    made.append(_write(partition, group))
                    count += len(group)
        return Merged(made, count, len(leftovers))


def merge_all(roots: Sequence[Path], *, min_parts: int = 16, max_rows: int = 1_000_000) -> Merged:
    """Every date partition under `roots` (`<root>/<model>/date=*`), merged."""
    made: list[Path] = []
    replaced = removed = 0
    for root in roots:
        for partition in sorted(root.glob("*/date=*")):
            done = merge(partition, min_parts=min_parts, max_rows=max_rows)
            made += done.made
            replaced += done.replaced
            removed += done.removed
    return Merged(made, replaced, removed)


def _replaced(parts: Sequence[Path]) -> set[str]:
    names: set[str] = set()
    for path in parts:
        if path.name.startswith(MERGED):
            metadata = pq.read_metadata(path).metadata or {}
            names.update(json.loads(metadata.get(REPLACES, b"[]")))
    return names


def _groups(parts: Sequence[Path], max_rows: int) -> Iterator[list[Path]]:
    """Consecutive parts of one schema, at most `max_rows` rows a group (a part bigger than
    that alone)."""
    group: list[Path] = []
    schema: pa.Schema | None = None
    rows = 0
    for path in parts:
        meta = pq.read_metadata(path)
        kind = meta.schema.to_arrow_schema().remove_metadata()
        if group and (not kind.equals(schema) or rows + meta.num_rows > max_rows):
            yield group
            group, rows = [], 0
        group.append(path)
        schema = kind
        rows += meta.num_rows
    if group:
        yield group


def _write(partition: Path, group: Sequence[Path]) -> Path:
    """One merged file of `group`, streamed a part at a time, named by what it replaces (the
    same parts merged again give the same file)."""
    names = [p.name for p in group]
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:20]
    path = partition / f"{MERGED}{digest}.parquet"
    kind = pq.read_schema(group[0]).remove_metadata()
    schema = kind.with_metadata({REPLACES: json.dumps(names)})
    dictionary = dictionary_columns(schema)
    # The writer is closed before the file is fsynced and renamed into place.
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, use_dictionary=dictionary) as out:
        pending: list[pa.Table] = []
        for part in group:
            pending.append(pq.ParquetFile(part).read().replace_schema_metadata(None))
            if sum(t.num_rows for t in pending) >= ROW_GROUP:
                out.write_table(_together(pending, schema))
                pending = []
        if pending:
            out.write_table(_together(pending, schema))
    return path


def _together(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    # Row groups of about ROW_GROUP rows, not one per part (a flush holds a few hundred).
    return pa.concat_tables(tables).combine_chunks().replace_schema_metadata(schema.metadata)


@contextlib.contextmanager
def _locked(partition: Path) -> Iterator[None]:
    with (partition / LOCK).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
