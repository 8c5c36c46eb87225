"""The feature store: one Parquet dataset per dataset name, one immutable directory per version.

On a local (or shared) disk:

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

On an S3-compatible object store (`s3://bucket/prefix`, shared/storage.py), which has no
rename:

    <root>/<dataset>/
        objects/<uuid>/data.parquet              a version's rows, written where they stay
        objects/<uuid>/_quarantine.parquet
        versions/version=1/_version.json         the version's record: the commit
        manifest.json                            index, derived as on disk

The rows are written first, under a fresh uuid no reader looks at. The record is written last
with a conditional put (`If-None-Match: *`): it is created only if no record of that number
exists, so of two writers racing for a number one wins and the other rescans and tries the
next. Before each attempt the writer rescans the records for its content hash, so a
redelivered ingest finds its version instead of making a second. A version is therefore
visible whole or not at all: readers find versions by their records only, and read the files
a record names. A crash between the rows and the record leaves objects no record names;
the dataset's next commit deletes those once they are older than `ORPHAN_AGE`
(docs/storage.md).
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from shared import storage
from shared.errors import CommitContended, ConfigError, VersionNotFound
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
MANIFEST_FILE = "manifest.json"
# A staged object older than this that no record names was left by a crashed writer. Far
# longer than any ingest's writing takes, so a slow writer's rows are never taken from it.
ORPHAN_AGE = timedelta(hours=6)
# Attempts at claiming a version number before giving up (each one lost to another writer).
COMMIT_ATTEMPTS = 50


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

    `directory` is a location (shared/storage.py): a local directory or an object-store
    prefix. Writing (Parquet encoding and zstd) runs on a thread of its own, overlapping the
    reading and validating of the next chunk; a queue of two chunks bounds the memory this
    costs. Accepted rows are gathered into row groups of at least `ROW_GROUP_ROWS`.
    """

    ROW_GROUP_ROWS = 128 * 1024

    def __init__(self, directory: str, schema: pa.Schema) -> None:
        self.directory = directory
        self.schema = schema
        self.rows = 0
        self.quarantine_lines = 0
        self.committed = False
        self._fs, self._path = storage.resolve(directory)
        self._queue: queue.Queue[tuple[pa.Table, pa.Table] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = threading.Thread(
            target=self._write_loop,
            name=f"parquet-writer-{storage.name(directory)}",
            daemon=True,
        )
        self._thread.start()

    def write(self, accepted: pa.Table, quarantine: pa.Table) -> None:
        self._raise_writer_error()
        self.rows += accepted.num_rows
        self.quarantine_lines += quarantine.num_rows
        self._queue.put((accepted, quarantine))

    def close(self) -> None:
        """Flush everything to the store; raises what the writer thread failed with, if
        anything."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._raise_writer_error()

    def file(self, name: str) -> str:
        """The location of one of the staged files."""
        return storage.join(self.directory, name)

    @property
    def has_quarantine(self) -> bool:
        return storage.exists(self.file(QUARANTINE_FILE))

    def read_quarantine(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The quarantine lines staged so far (`columns` of them). Flushes, so nothing more can
        be written: for explaining a version that will not be committed."""
        self.close()
        if not self.has_quarantine:
            return QUARANTINE_SCHEMA.empty_table().select(list(columns or QUARANTINE_SCHEMA.names))
        return pq.read_table(self._at(QUARANTINE_FILE), columns=columns, filesystem=self._fs)

    def _at(self, name: str) -> str:
        return storage.join(self._path, name)

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing {self.directory} failed") from self._error

    def _write_loop(self) -> None:
        data = pq.ParquetWriter(
            self._at(DATA_FILE),
            self.schema,
            compression=COMPRESSION,
            use_dictionary=_dictionary_columns(self.schema),
            filesystem=self._fs,
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
                            self._at(QUARANTINE_FILE),
                            QUARANTINE_SCHEMA,
                            compression=COMPRESSION,
                            filesystem=self._fs,
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
    """Versioned Parquet datasets under `location`: a local directory or an `s3://` URI."""

    def __init__(self, location: Path | str) -> None:
        self.location = str(location)
        self.on_object_store = storage.is_object_store(self.location)
        self._fs, self._base = storage.resolve(self.location)

    # --- layout ------------------------------------------------------------------------------

    def _at(self, *parts: str) -> str:
        """A location under the store's root, as users and events name it."""
        return storage.join(self.location, *parts)

    def _record(self, dataset: str, version: int) -> str:
        """The location of a version's record."""
        return self._at(dataset, "versions", f"version={version}", META_FILE)

    def _home(self, dataset: str, version: int, info: VersionInfo | None = None) -> str:
        """Where a version's files are: its directory on disk (the layout: no read), the
        object prefix its record names on S3 (`info`, if the caller has it, else read)."""
        if not self.on_object_store:
            return self._at(dataset, "versions", f"version={version}")
        return (info or self.get(dataset, version)).path

    def data_path(self, dataset: str, version: int) -> str:
        """The Parquet file of a version's accepted rows."""
        return storage.join(self._home(dataset, version), DATA_FILE)

    def quarantine_path(self, dataset: str, version: int) -> str:
        """The Parquet file of a version's quarantine lines (absent when it has none)."""
        return storage.join(self._home(dataset, version), QUARANTINE_FILE)

    def scores_path(self, dataset: str, version: int, job_id: str) -> str:
        """Where batch job `job_id` writes its scores of a version (kept apart from the
        versions: a dataset's versions hold its rows only)."""
        return self._at("scores", dataset, f"version={version}", f"{job_id}.parquet")

    # --- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def stage(self, dataset: str, schema: pa.Schema) -> Iterator[StagedVersion]:
        """A staging area that is removed on exit unless `commit` kept it."""
        directory = (
            self._at(dataset, "objects", uuid.uuid4().hex)  # where it stays once committed
            if self.on_object_store
            else self._stage_local(dataset)
        )
        staged = StagedVersion(directory, schema)
        try:
            yield staged
        finally:
            staged.close()
            if not staged.committed:
                storage.remove_tree(directory)

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
        fields: dict[str, Any] = {
            "dataset": dataset,
            "content_hash": content_hash,
            "rows": staged.rows,
            "quarantined_rows": quarantined_rows,
            "quarantine_lines": staged.quarantine_lines,
            "source": source,
            "spec_fingerprint": spec_fingerprint,
            "columns": [
                {"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in staged.schema
            ],
        }
        if self.on_object_store:
            return self._commit_object(staged, fields)
        return self._commit_local(staged, fields)

    def _commit_local(
        self, staged: StagedVersion, fields: dict[str, Any]
    ) -> tuple[VersionInfo, bool]:
        """Under the dataset's lock: find the hash, or rename the staged directory into place."""
        dataset = fields["dataset"]
        directory = Path(staged.directory)
        fsync_file(directory / DATA_FILE)
        if staged.has_quarantine:
            fsync_file(directory / QUARANTINE_FILE)
        with self._locked(dataset):
            found = self._scan(dataset)
            existing = _with_hash(found, fields["content_hash"])
            if existing is not None:
                return existing, False
            version = max((v.version for v in found), default=0) + 1
            final = Path(self._at(dataset, "versions", f"version={version}"))
            info = self._info(fields, version, str(final), staged.has_quarantine)
            write_text_atomic(directory / META_FILE, info.model_dump_json(indent=2))
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(directory, final)  # the commit point
            staged.committed = True
            fsync_dir(final.parent)
            self._write_manifest(dataset, [*found, info])
            return info, True

    def _commit_object(
        self, staged: StagedVersion, fields: dict[str, Any]
    ) -> tuple[VersionInfo, bool]:
        """Claim the next number with a conditional put of the record; on losing it to another
        writer, rescan (for the hash, then the number) and try again."""
        dataset = fields["dataset"]
        quarantine = staged.has_quarantine
        for _ in range(COMMIT_ATTEMPTS):
            found = self._scan(dataset)
            existing = _with_hash(found, fields["content_hash"])
            if existing is not None:
                self._prune_orphans(dataset, found)
                return existing, False
            version = max((v.version for v in found), default=0) + 1
            info = self._info(fields, version, staged.directory, quarantine)
            if _put_if_absent(
                self._record(dataset, version), info.model_dump_json(indent=2).encode()
            ):
                staged.committed = True
                self._write_manifest(dataset, [*found, info])
                self._prune_orphans(dataset, [*found, info])
                return info, True
        raise CommitContended(
            f"dataset {dataset!r}: no version number claimed in {COMMIT_ATTEMPTS} attempts"
        )

    def check(self) -> None:
        """On an object store, that conditional puts are honoured: a store that ignored
        If-None-Match would let two writers overwrite one version's record. ConfigError if
        not, so the ingestor refuses to start rather than lose versions. Nothing to check on
        a disk."""
        if not self.on_object_store:
            return
        probe = self._at(".streamops-probe", uuid.uuid4().hex)
        try:
            honoured = _put_if_absent(probe, b"1") and not _put_if_absent(probe, b"2")
        finally:
            with contextlib.suppress(FileNotFoundError):  # its own only: others may probe
                self._fs.delete_file(storage.resolve(probe)[1])
        if not honoured:
            raise ConfigError(
                f"the object store of {self.location} ignores conditional puts "
                "(If-None-Match): versions cannot be committed safely there (docs/storage.md)"
            )

    @staticmethod
    def _info(fields: dict[str, Any], version: int, home: str, quarantine: bool) -> VersionInfo:
        return VersionInfo(
            **fields,
            version=version,
            created_at=datetime.now(UTC),
            path=home,
            quarantine_path=storage.join(home, QUARANTINE_FILE) if quarantine else None,
        )

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
        try:
            with self._fs.open_input_stream(
                storage.resolve(self._record(dataset, version))[1]
            ) as stream:
                text = stream.read()
        except FileNotFoundError:
            raise VersionNotFound(f"dataset {dataset!r} has no version {version}") from None
        return VersionInfo.model_validate_json(text)

    def find_by_hash(self, dataset: str, content_hash: str) -> VersionInfo | None:
        return _with_hash(self._scan(dataset), content_hash)

    def dataset(self, dataset: str) -> ds.Dataset:
        """All versions as one pyarrow dataset, with an int `version` column."""
        found = self._scan(dataset)
        if not found:
            raise VersionNotFound(f"dataset {dataset!r} has no version")
        if not self.on_object_store:
            directory = storage.join(self._base, dataset, "versions")
            partitioning = ds.partitioning(pa.schema([("version", pa.int64())]), flavor="hive")
            return ds.dataset(
                directory, format="parquet", partitioning=partitioning, filesystem=self._fs
            )
        # The files the records name, each tagged with its version: never a stray object.
        paths = [storage.resolve(storage.join(v.path, DATA_FILE))[1] for v in found]
        schema = pq.read_schema(paths[0], filesystem=self._fs).append(
            pa.field("version", pa.int64())
        )
        return ds.FileSystemDataset.from_paths(
            paths,
            schema=schema,
            format=ds.ParquetFileFormat(),
            filesystem=self._fs,
            partitions=[ds.field("version") == v.version for v in found],
        )

    def read(self, dataset: str, version: int | str = "latest") -> pa.Table:
        """One version (a number), the newest ("latest") or every version ("all")."""
        if version == "all":
            return self.dataset(dataset).to_table()
        info = self.latest(dataset) if version == "latest" else self.get(dataset, int(version))
        return self._read(self._home(dataset, info.version, info), DATA_FILE)

    def quarantine(self, dataset: str, version: int) -> pa.Table:
        """A version's quarantine lines (none when every row was accepted)."""
        info = self.get(dataset, version)
        if info.quarantine_path is None:  # its record says it has none
            return QUARANTINE_SCHEMA.empty_table()
        return self._read(self._home(dataset, version, info), QUARANTINE_FILE)

    def _read(self, home: str, name: str) -> pa.Table:
        return pq.read_table(storage.resolve(storage.join(home, name))[1], filesystem=self._fs)

    # --- internals ---------------------------------------------------------------------------

    def _scan(self, dataset: str) -> list[VersionInfo]:
        """Every committed version: the records that exist (one listing), each read from the
        manifest when it holds it, else from the record itself. Records are never rewritten,
        so the manifest's copy is the same; it only saves a read per version (on S3, a GET
        each: a thousand versions would cost seconds per commit)."""
        known = self._manifest(dataset)
        found: list[VersionInfo] = []
        for file in storage.files_under(self._at(dataset, "versions")):
            number = _record_number(file.path)
            if file.base_name != META_FILE or number is None:
                continue
            cached = known.get(number)
            if cached is not None:
                found.append(cached)
                continue
            with self._fs.open_input_stream(file.path) as stream:
                found.append(VersionInfo.model_validate_json(stream.read()))
        return sorted(found, key=_number)

    def _manifest(self, dataset: str) -> dict[int, VersionInfo]:
        """The manifest's versions by number; none when it is absent or unreadable (it is only
        a cache of the records)."""
        try:
            with self._fs.open_input_stream(
                storage.join(self._base, dataset, MANIFEST_FILE)
            ) as stream:
                entries = json.loads(stream.read())["versions"]
            versions = [VersionInfo.model_validate(entry) for entry in entries]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        return {v.version: v for v in versions}

    def _write_manifest(self, dataset: str, versions: list[VersionInfo]) -> None:
        """The index of `versions`: derived, rewritten after each commit (a crash before it is
        repaired by the next one; nothing reads it to decide what exists)."""
        manifest = {
            "dataset": dataset,
            "versions": [v.model_dump(mode="json") for v in sorted(versions, key=_number)],
        }
        text = json.dumps(manifest, indent=2)
        if self.on_object_store:
            with self._fs.open_output_stream(
                storage.join(self._base, dataset, MANIFEST_FILE)
            ) as out:
                out.write(text.encode())
        else:
            write_text_atomic(Path(self._at(dataset, MANIFEST_FILE)), text)

    def _stage_local(self, dataset: str) -> str:
        staging = Path(self._at(dataset, ".staging"))
        staging.mkdir(parents=True, exist_ok=True)
        self._prune_staging(staging)
        directory = staging / f"{os.getpid()}-{uuid.uuid4().hex}"
        directory.mkdir()
        return str(directory)

    def _prune_orphans(self, dataset: str, found: list[VersionInfo]) -> None:
        """Delete staged objects that no record of `found` (the commit's own scan) names and
        that are older than ORPHAN_AGE: what writers that crashed before their commit left
        behind."""
        named = {storage.name(v.path) for v in found}
        cutoff = datetime.now(UTC) - ORPHAN_AGE
        for file in storage.files_under(self._at(dataset, "objects")):
            owner = storage.name(storage.parent(file.path))
            if owner not in named and file.mtime is not None and file.mtime < cutoff:
                self._fs.delete_file(file.path)

    @contextlib.contextmanager
    def _locked(self, dataset: str) -> Iterator[None]:
        path = Path(self._at(dataset, ".lock"))
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


def _number(info: VersionInfo) -> int:
    return info.version


def _record_number(path: str) -> int | None:
    """N of `.../version=N/_version.json`; None for any other path."""
    key, _, number = storage.name(storage.parent(path)).partition("=")
    return int(number) if key == "version" and number.isdigit() else None


def _with_hash(found: list[VersionInfo], content_hash: str) -> VersionInfo | None:
    return next((v for v in found if v.content_hash == content_hash), None)


def _put_if_absent(location: str, body: bytes) -> bool:
    """Create the object at `location` unless one exists (S3's conditional put): whether this
    call created it."""
    from botocore.exceptions import ClientError

    bucket, key = storage.split_s3(location)
    try:
        storage.s3_client().put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status in (409, 412):  # 412: it exists; 409: a concurrent put of it is under way
            return False
        raise
    return True


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
