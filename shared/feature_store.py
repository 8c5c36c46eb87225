"""The feature store: one Parquet dataset per dataset name, one immutable directory per version.

    <root>/<dataset>/
        versions/version=1/data.parquet         the accepted rows
        versions/version=1/_quarantine.parquet  the rejected rows, one line per (row, column)
        versions/version=1/_version.json        what this version is (hash, counts, source...)
        manifest.json                           index of all versions, derived from the above
        .staging/                               versions being written
        .lock                                   serialises commits
    <root>/scores/<dataset>/version=1/<job>.parquet  batch scoring's results for a version

Code outside this module asks for paths (`data_path`, `scores_path`...) rather than building
them, so the layout can change here alone.

A version is written in `.staging`, then, under the dataset's lock, either found to exist
already (same content hash: the staged copy is dropped) or renamed into `versions/` with the
next number. The rename is the commit: a version directory is complete or absent. The
manifest is rebuilt from the `_version.json` files after each commit, so a crash between the
two is repaired by the next commit or read. Hive-style directory names let pyarrow read one
version, the latest, or all of them (with a `version` column) in one call.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from shared.errors import VersionNotFound
from shared.events import DataIngested
from shared.fsio import fsync_dir, fsync_file, write_text_atomic

# One line per failing (row, column) of a version: what the ingestor refused, and why.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("column", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("error_type", pa.string()),
        pa.field("value", pa.string()),
    ]
)

COMPRESSION = "zstd"
DATA_FILE = "data.parquet"
QUARANTINE_FILE = "_quarantine.parquet"
META_FILE = "_version.json"


class VersionInfo(BaseModel):
    """One stored version, as recorded in its `_version.json` and in the manifest."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    version: int
    content_hash: str
    rows: int
    quarantined_rows: int
    quarantine_lines: int
    source: str
    spec_fingerprint: str
    columns: list[dict[str, Any]]
    created_at: datetime
    path: str
    quarantine_path: str | None


def announcement(
    info: VersionInfo, *, event_id: uuid.UUID, correlation_id: str, new_version: bool, source: str
) -> DataIngested:
    """The `data-ingested` event that says version `info` is durable."""
    return DataIngested(
        event_id=event_id,
        correlation_id=correlation_id,
        dataset=info.dataset,
        version=info.version,
        content_hash=info.content_hash,
        rows=info.rows,
        quarantined_rows=info.quarantined_rows,
        path=info.path,
        quarantine_path=info.quarantine_path,
        new_version=new_version,
        source=source,
    )


class StagedVersion:
    """A version being written: rows and quarantine lines go to Parquet as they come.

    Writing (Parquet encoding and zstd) runs on a thread of its own, overlapping the reading
    and validating of the next chunk; a queue of two chunks bounds the memory this costs.
    Accepted rows are gathered into row groups of at least `ROW_GROUP_ROWS`.
    """

    ROW_GROUP_ROWS = 128 * 1024

    def __init__(self, directory: Path, schema: pa.Schema) -> None:
        self.directory = directory
        self.schema = schema
        self.rows = 0
        self.quarantine_lines = 0
        self._queue: queue.Queue[tuple[pa.Table, pa.Table] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = threading.Thread(
            target=self._write_loop, name=f"parquet-writer-{directory.name}", daemon=True
        )
        self._thread.start()

    def write(self, accepted: pa.Table, quarantine: pa.Table) -> None:
        self._raise_writer_error()
        self.rows += accepted.num_rows
        self.quarantine_lines += quarantine.num_rows
        self._queue.put((accepted, quarantine))

    def close(self) -> None:
        """Flush everything to disk; raises what the writer thread failed with, if anything."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._raise_writer_error()

    @property
    def has_quarantine(self) -> bool:
        return (self.directory / QUARANTINE_FILE).exists()

    def read_quarantine(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The quarantine lines staged so far (`columns` of them). Flushes, so nothing more can
        be written: for explaining a version that will not be committed."""
        self.close()
        if not self.has_quarantine:
            return QUARANTINE_SCHEMA.empty_table().select(list(columns or QUARANTINE_SCHEMA.names))
        return pq.read_table(self.directory / QUARANTINE_FILE, columns=columns)

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing {self.directory} failed") from self._error

    def _write_loop(self) -> None:
        data = pq.ParquetWriter(
            self.directory / DATA_FILE,
            self.schema,
            compression=COMPRESSION,
            use_dictionary=_dictionary_columns(self.schema),
        )
        bad: pq.ParquetWriter | None = None
        pending: list[pa.Table] = []
        pending_rows = 0
        try:
            while (item := self._queue.get()) is not None:
                accepted, quarantine = item
                if accepted.num_rows:
                    pending.append(accepted)
                    pending_rows += accepted.num_rows
                if pending_rows >= self.ROW_GROUP_ROWS:
                    data.write_table(pa.concat_tables(pending))
                    pending, pending_rows = [], 0
                if quarantine.num_rows:
                    if bad is None:
                        bad = pq.ParquetWriter(
                            self.directory / QUARANTINE_FILE,
                            QUARANTINE_SCHEMA,
                            compression=COMPRESSION,
                        )
                    bad.write_table(quarantine)
            if pending:
                data.write_table(pa.concat_tables(pending))
        except BaseException as exc:
            self._error = exc
            while self._queue.get() is not None:  # unblock the producer until close()
                pass
        finally:
            data.close()
            if bad is not None:
                bad.close()


class FeatureStore:
    """Versioned Parquet datasets under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # --- layout ------------------------------------------------------------------------------

    def dataset_dir(self, dataset: str) -> Path:
        return self.root / dataset

    def versions_dir(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / "versions"

    def version_dir(self, dataset: str, version: int) -> Path:
        return self.versions_dir(dataset) / f"version={version}"

    def data_path(self, dataset: str, version: int) -> Path:
        """The Parquet file of a version's accepted rows."""
        return self.version_dir(dataset, version) / DATA_FILE

    def quarantine_path(self, dataset: str, version: int) -> Path:
        """The Parquet file of a version's quarantine lines (absent when it has none)."""
        return self.version_dir(dataset, version) / QUARANTINE_FILE

    def scores_path(self, dataset: str, version: int, job_id: str) -> Path:
        """Where batch job `job_id` writes its scores of a version (kept apart from the
        versions: a dataset's versions hold its rows only)."""
        return self.root / "scores" / dataset / f"version={version}" / f"{job_id}.parquet"

    # --- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def stage(self, dataset: str, schema: pa.Schema) -> Iterator[StagedVersion]:
        """A staging directory that is removed on exit unless `commit` moved it into place."""
        staging = self.dataset_dir(dataset) / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        self._prune_staging(staging)
        directory = staging / f"{os.getpid()}-{uuid.uuid4().hex}"
        directory.mkdir()
        staged = StagedVersion(directory, schema)
        try:
            yield staged
        finally:
            staged.close()
            shutil.rmtree(directory, ignore_errors=True)

    def commit(
        self,
        dataset: str,
        staged: StagedVersion,
        content_hash: str,
        *,
        quarantined_rows: int,
        source: str,
        spec_fingerprint: str,
    ) -> tuple[VersionInfo, bool]:
        """Store the staged version, or find the one with the same hash: (info, created)."""
        staged.close()
        fsync_file(staged.directory / DATA_FILE)
        if staged.has_quarantine:
            fsync_file(staged.directory / QUARANTINE_FILE)
        with self._locked(dataset):
            existing = self.find_by_hash(dataset, content_hash)
            if existing is not None:
                return existing, False
            version = max((v.version for v in self._scan(dataset)), default=0) + 1
            final = self.version_dir(dataset, version)
            info = VersionInfo(
                dataset=dataset,
                version=version,
                content_hash=content_hash,
                rows=staged.rows,
                quarantined_rows=quarantined_rows,
                quarantine_lines=staged.quarantine_lines,
                source=source,
                spec_fingerprint=spec_fingerprint,
                columns=[
                    {"name": f.name, "type": str(f.type), "nullable": f.nullable}
                    for f in staged.schema
                ],
                created_at=datetime.now(UTC),
                path=str(final),
                quarantine_path=(
                    str(self.quarantine_path(dataset, version)) if staged.has_quarantine else None
                ),
            )
            write_text_atomic(staged.directory / META_FILE, info.model_dump_json(indent=2))
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staged.directory, final)  # the commit point
            fsync_dir(final.parent)
            self._write_manifest(dataset)
            return info, True

    # --- reading -----------------------------------------------------------------------------

    def versions(self, dataset: str) -> list[VersionInfo]:
        """Every committed version, oldest first."""
        return self._scan(dataset)

    def latest(self, dataset: str) -> VersionInfo:
        found = self._scan(dataset)
        if not found:
            raise VersionNotFound(f"dataset {dataset!r} has no version")
        return found[-1]

    def get(self, dataset: str, version: int) -> VersionInfo:
        meta = self.version_dir(dataset, version) / META_FILE
        if not meta.is_file():
            raise VersionNotFound(f"dataset {dataset!r} has no version {version}")
        return VersionInfo.model_validate_json(meta.read_text())

    def find_by_hash(self, dataset: str, content_hash: str) -> VersionInfo | None:
        return next((v for v in self._scan(dataset) if v.content_hash == content_hash), None)

    def dataset(self, dataset: str) -> ds.Dataset:
        """All versions as one pyarrow dataset, with an int `version` column."""
        directory = self.versions_dir(dataset)
        if not directory.is_dir():
            raise VersionNotFound(f"dataset {dataset!r} has no version")
        partitioning = ds.partitioning(pa.schema([("version", pa.int64())]), flavor="hive")
        return ds.dataset(directory, format="parquet", partitioning=partitioning)

    def read(self, dataset: str, version: int | str = "latest") -> pa.Table:
        """One version (a number), the newest ("latest") or every version ("all")."""
        if version == "all":
            return self.dataset(dataset).to_table()
        number = self.latest(dataset).version if version == "latest" else int(version)
        self.get(dataset, number)  # raises VersionNotFound
        return pq.read_table(self.data_path(dataset, number))

    def quarantine(self, dataset: str, version: int) -> pa.Table:
        """A version's quarantine lines (none when every row was accepted)."""
        path = self.quarantine_path(dataset, version)
        return pq.read_table(path) if path.exists() else QUARANTINE_SCHEMA.empty_table()

    # --- internals ---------------------------------------------------------------------------

    def _scan(self, dataset: str) -> list[VersionInfo]:
        directory = self.versions_dir(dataset)
        if not directory.is_dir():
            return []
        found = [
            VersionInfo.model_validate_json(meta.read_text())
            for meta in directory.glob(f"version=*/{META_FILE}")
        ]
        return sorted(found, key=lambda v: v.version)

    def _write_manifest(self, dataset: str) -> None:
        versions = [v.model_dump(mode="json") for v in self._scan(dataset)]
        manifest = {"dataset": dataset, "versions": versions}
        manifest_path = self.dataset_dir(dataset) / "manifest.json"
        write_text_atomic(manifest_path, json.dumps(manifest, indent=2))

    @contextlib.contextmanager
    def _locked(self, dataset: str) -> Iterator[None]:
        path = self.dataset_dir(dataset) / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _prune_staging(staging: Path) -> None:
        """Drop what crashed writers left behind (their process is gone)."""
        for entry in staging.iterdir():
            pid = entry.name.split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Dictionary-encode what repeats (categories, labels, flags), not continuous values:
    building a dictionary of a million distinct floats costs more than writing them."""
    return [
        f.name
        for f in schema
        if pa.types.is_string(f.type) or pa.types.is_integer(f.type) or pa.types.is_boolean(f.type)
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
