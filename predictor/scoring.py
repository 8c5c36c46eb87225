"""Batch scoring without a broker: resolve the input, plan chunks, score one chunk to a part
file, assemble the parts into the output.

Files are named by locations (shared/storage.py): local paths, or `s3://` URIs when the input
is on an object store. Every local write is a temporary file renamed into place, and an object
appears whole when its upload completes, so a chunk scored twice (a redelivery after a crash)
rewrites the same content, and a reader never sees half a file. Scoring is vectorised: one
model call per chunk, no per-row Python.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from predictor.cache import Served
from predictor.outputs import output, output_columns, predict_with, probabilities
from shared import storage
from shared.errors import ChunkRefused, ScoreInputRejected, VersionNotFound
from shared.events import FeatureStoreInput, ParquetInput, derived_event_id
from shared.feature_store import FeatureStore
from shared.fsio import atomic_path
from shared.paths import confine_file
from shared.schema import ModelSchema, input_frame

_SAFE_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass(frozen=True)
class Source:
    """A resolved file input: where it is, where its results go, how many rows it has."""

    path: str
    output: str
    rows: int


# --- resolving the input -----------------------------------------------------------------------


def confine_parquet(uri: str, roots: Sequence[Path], prefixes: Sequence[str] = ()) -> str:
    """The location of a Parquet input: a regular file inside one of `roots` (its real path),
    or an object under one of the object-store `prefixes`."""
    if storage.is_object_store(uri):
        if not _under_prefix(uri, prefixes):
            shown = ", ".join(prefixes) or "none configured"
            raise ScoreInputRejected(
                f"{uri} is outside the allowed object-store prefixes ({shown})"
            )
        if not storage.exists(uri):
            raise ScoreInputRejected(f"{uri}: no such object")
        return uri
    return str(confine_file(uri, roots, "a Parquet input", "score roots", ScoreInputRejected))


def check_chunk_paths(
    input_path: str, output: str, roots: Sequence[Path], prefixes: Sequence[str] = ()
) -> None:
    """Chunk entries travel on a stream anyone with Redis access can write: their paths are
    checked again (the input inside a root, the output beside it or under the store's root)."""
    for what, location in (("input", input_path), ("output", output)):
        if storage.is_object_store(location):
            allowed = _under_prefix(location, prefixes)
        else:
            real = Path(location).resolve()
            allowed = any(real.is_relative_to(root) for root in roots)
        if not allowed:
            raise ChunkRefused(f"{what} {location} is outside the allowed roots")


def _under_prefix(uri: str, prefixes: Sequence[str]) -> bool:
    """Whether `uri` names an object under one of `prefixes` (no `..` segment: object keys
    are not paths, but a key with one would read as outside the prefix to people)."""
    if any(part in ("..", ".") for part in uri.split("/")):
        return False
    return any(uri.startswith(prefix.rstrip("/") + "/") for prefix in prefixes)


def scored_path(path: str) -> str:
    """`x.parquet` → `x.scored.parquet`, beside it."""
    stem = storage.name(path).removesuffix(".parquet")
    return storage.join(storage.parent(path), f"{stem}.scored.parquet")


def resolve(
    job_id: str,
    source: ParquetInput | FeatureStoreInput,
    roots: Sequence[Path],
    store: FeatureStore,
    prefixes: Sequence[str] = (),
) -> tuple[str, str]:
    """(input file, output file) of a job; ScoreInputRejected when the input may not be read."""
    if isinstance(source, ParquetInput):
        path = confine_parquet(source.uri, roots, prefixes)
        return path, scored_path(path)
    if not _SAFE_JOB_ID.match(job_id):
        raise ScoreInputRejected(f"job id {job_id!r} cannot name a file (letters, digits, ._-)")
    try:
        version = source.version or store.latest(source.dataset).version
        store.get(source.dataset, version)  # raises VersionNotFound
    except VersionNotFound as exc:
        raise ScoreInputRejected(str(exc)) from exc
    output = store.scores_path(source.dataset, version, job_id)
    return store.data_path(source.dataset, version), output


def required(schema: ModelSchema) -> list[str]:
    """The columns an input must have (a nullable one may be absent: missing values)."""
    return [c.name for c in schema.columns if not c.nullable]


def inspect(path: str, output: str, schema: ModelSchema) -> Source:
    """Check the file has every feature column and at least one row (footer only)."""
    try:
        meta = _parquet_file(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ScoreInputRejected(f"{path} is not a readable Parquet file: {exc}") from exc
    missing = [name for name in required(schema) if name not in meta.schema_arrow.names]
    if missing:
        raise ScoreInputRejected(f"{path} lacks feature columns {missing}")
    if meta.metadata.num_rows == 0:
        raise ScoreInputRejected(f"{path} has no rows")
    return Source(path, output, meta.metadata.num_rows)


# --- planning and reading ----------------------------------------------------------------------


def plan_chunks(rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of at most `chunk_rows`, covering `rows` in order."""
    return [(start, min(start + chunk_rows, rows)) for start in range(0, rows, chunk_rows)]


def _parquet_file(location: str) -> pq.ParquetFile:
    filesystem, path = storage.resolve(location)
    return pq.ParquetFile(path, filesystem=filesystem)


def read_range(path: str, start: int, stop: int, columns: Sequence[str]) -> pa.Table:
    """Rows [start, stop) of `columns`: only the row groups overlapping the range are read."""
    parquet = _parquet_file(path)
    groups: list[int] = []
    first_row: int | None = None
    offset = 0
    for index in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(index).num_rows
        if offset < stop and offset + size > start:
            groups.append(index)
            first_row = offset if first_row is None else first_row
        offset += size
    table = parquet.read_row_groups(groups, columns=list(columns))
    return table.slice(start - (first_row or 0), stop - start)


# --- scoring -----------------------------------------------------------------------------------


def predictions_table(served: Served, features: pd.DataFrame, first_row: int) -> pa.Table:
    """`row`, the prediction, `model_version` and, for classifiers, `probability_<class>`.

    The prediction is one column `prediction` when the model answers one value per row, else
    one column per output: `prediction_<column>` for a frame, `prediction_<i>` for a matrix.
    For a classifier the prediction is the most probable class, taken from the one
    `predict_proba` call (scikit-learn's own `predict` does exactly that for its forests,
    boosting and linear models): one pass over the trees instead of two.
    """
    count = len(features)
    columns: dict[str, Any] = {"row": np.arange(first_row, first_row + count, dtype=np.int64)}
    version = np.full(count, served.version, dtype=np.int64)
    if served.classes is not None:
        predicted, proba = probabilities(served, features)
        columns["prediction"] = predicted
        columns["model_version"] = version
        for index, label in enumerate(served.classes):
            columns[f"probability_{label}"] = proba[:, index]
    else:
        columns.update(output_columns(output(served.model.predict(features))))
        columns["model_version"] = version
    return pa.table(columns)


@dataclass(frozen=True)
class ScoredChunk:
    """A chunk's rows as read (the feature columns) and its results, as written."""

    inputs: pa.Table
    results: pa.Table


def score_chunk(served: Served, path: str, rows: tuple[int, int], part: str) -> ScoredChunk:
    """Score rows [start, stop) of `path` into the part file `part`."""
    start, stop = rows
    present = set(_parquet_file(path).schema_arrow.names)  # an optional column may be absent
    names = [name for name in served.schema.names if name in present]
    inputs = read_range(path, start, stop, names)
    table = predictions_table(served, input_frame(served.schema, inputs.to_pandas()), start)
    write_atomic(table, part)
    return ScoredChunk(inputs, table)


def write_atomic(table: pa.Table, location: str) -> None:
    """Write `table` to `location`: all of it or nothing (shared.fsio on disk; an object
    appears when its upload completes)."""
    filesystem, _ = storage.resolve(location)
    with _writing(location) as target:
        pq.write_table(
            table, target, use_dictionary=dictionary_columns(table.schema), filesystem=filesystem
        )


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth dictionary encoding: the model's version, and predictions that are
    labels (integers, text, booleans). Row numbers and floats (probabilities, values) are all
    different: trying a dictionary on them first tripled the time to write a result, and made
    the file bigger."""
    return [
        f.name
        for f in schema
        if f.name != "row" and not pa.types.is_floating(f.type) and not pa.types.is_nested(f.type)
    ]


# --- parts and assembly ------------------------------------------------------------------------


def parts_dir(output: str, job_id: str) -> str:
    """Where a job's part files wait to be assembled: hidden, beside the output, per job (two
    jobs on the same input do not mix their parts)."""
    token = derived_event_id("score-parts", job_id).hex[:16]
    return storage.join(storage.parent(output), f".{storage.name(output)}.{token}.parts")


def part_path(output: str, job_id: str, chunk: int) -> str:
    return storage.join(parts_dir(output, job_id), f"chunk-{chunk:06d}.parquet")


def assemble(output: str, job_id: str, chunks: int) -> int:
    """Concatenate the job's parts in chunk order into `output` (atomically); the rows.

    Streams part by part, so memory holds one chunk, not the whole result.
    """
    filesystem, _ = storage.resolve(output)
    parts = [storage.resolve(part_path(output, job_id, chunk))[1] for chunk in range(chunks)]
    schema = pq.read_schema(parts[0], filesystem=filesystem)
    rows = 0
    with _writing(output) as target:
        writer = pq.ParquetWriter(
            target, schema, use_dictionary=dictionary_columns(schema), filesystem=filesystem
        )
        with writer:
            for part in parts:
                table = pq.read_table(part, filesystem=filesystem)
                writer.write_table(table)
                rows += table.num_rows
    return rows


@contextlib.contextmanager
def _writing(location: str) -> Iterator[str]:
    """The path to write `location`'s content to: a temporary file renamed onto it on disk,
    the object itself on a store (it appears when the upload completes)."""
    if storage.is_object_store(location):
        yield storage.resolve(location)[1]
        return
    target = Path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        yield str(tmp)


def remove_parts(output: str, job_id: str) -> None:
    storage.remove_tree(parts_dir(output, job_id))


# --- inline rows -------------------------------------------------------------------------------


def score_rows(served: Served, rows: Sequence[dict[str, Any]], limit: int) -> list[Any]:
    """One prediction per row, in order, from one model call (the answers the online path
    gives); ScoreInputRejected when there are too many rows or they lack feature columns or do
    not fit the model."""
    if len(rows) > limit:
        raise ScoreInputRejected(f"{len(rows)} inline rows, at most {limit}: send a file")
    frame = pd.DataFrame(list(rows))
    missing = [name for name in required(served.schema) if name not in frame.columns]
    if missing:
        raise ScoreInputRejected(f"rows lack feature columns {missing}")
    if frame.empty:
        return []
    try:
        return predict_with(served, input_frame(served.schema, frame)).predictions
    except (ValueError, TypeError) as exc:
        raise ScoreInputRejected(f"rows do not fit the model: {exc}") from exc
