"""The prediction log: what the replicas answered, with the lineage of the version that did.

Layout, under the feature store's root (the leading underscore keeps it apart from datasets,
whose names cannot start with one):

    _predictions/<model>/date=YYYY-MM-DD/part-<first>-<last>.parquet    online, from the stream
    _predictions/<model>/date=YYYY-MM-DD/part-batch-<job>-<chunk>.parquet    batch scoring

Every file is named by what it holds (the stream entries, or the job's chunk), and written
whole or not at all: writing it again after a crash replaces it with the same rows, so a row is
never lost and never held twice. One record per row; the columns are `RECORD_COLUMNS`, then
`input_uri` for batch rows (the file scored), then `features` (a struct of the feature values
as received; absent when the model's are not kept, and for batch rows unless asked for).
Reading a model's log for a window is one pyarrow dataset call (`read_log`).
"""

from __future__ import annotations

import shutil
import urllib.parse
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from shared import partmerge
from shared.events import Lineage, PredictionsLogged
from shared.fsio import atomic_path

LOG_DIR = "_predictions"
# The `source` of a challenger's records: what it would have answered (docs/rollout.md).
SHADOW = "shadow"
TIME = pa.timestamp("ms", tz="UTC")
# The columns every record has, in this order (then `features`).
RECORD_COLUMNS = (
    "request_id",
    "row",
    "source",
    "model",
    "version",
    "replica",
    "time",
    "latency_ms",
    "prediction",
    "probabilities",
    "classes",
    "run_id",
    "dataset",
    "dataset_version",
    "content_hash",
    "log_id",
)


def log_root(store_root: Path) -> Path:
    return store_root / LOG_DIR


def model_dir(store_root: Path, model: str) -> Path:
    """A model's log directory: its name quoted, as registered names may hold any character."""
    return log_root(store_root) / urllib.parse.quote(model, safe="")


def partition(store_root: Path, model: str, day: date) -> Path:
    return model_dir(store_root, model) / f"date={day.isoformat()}"


def sampled(request_id: str, fraction: float) -> bool:
    """Whether a request is logged at sampling `fraction`: decided by its id, so every row of
    a request is in or out together, and every replica decides the same."""
    if fraction >= 1.0:
        return True
    return zlib.crc32(request_id.encode()) < fraction * 2**32


# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """The rows of one answered batch, ready to become records."""

    model: str
    version: int
    source: str  # online or batch
    replica: str
    time: datetime
    latency_ms: float
    request_ids: pa.Array  # one per row
    rows: pa.Array  # each row's index within its request (batch: within the input file)
    predictions: pa.Array
    probabilities: pa.Array | None
    classes: Sequence[Any] | None
    lineage: Lineage
    log_id: str
    features: pa.StructArray | None
    input_uri: str = ""  # batch rows: the file scored (`row` is the row in it)


def online_table(events: Sequence[tuple[PredictionsLogged, str]]) -> pa.Table:
    """The records of many `predictions` entries of one model, each with its entry id: built
    column by column across all of them (one Arrow array per column, not a table per entry,
    which cost a logger half a core at 600 entries/s)."""
    names = list(dict.fromkeys(n for event, _ in events for n in event.features or {}))
    features: dict[str, list[Any]] = {n: [] for n in names}
    kept = any(event.features is not None for event, _ in events)
    columns: dict[str, list[Any]] = defaultdict(list)
    for event, log_id in events:
        count = len(event.predictions)
        for request_id, rows in event.requests:
            columns["request_id"].extend([request_id] * rows)
            columns["row"].extend(range(rows))
        lineage = event.lineage
        classes = None if event.classes is None else [str(c) for c in event.classes]
        for name, value in (
            ("source", SHADOW if event.shadow else "online"),
            ("model", event.model_name),
            ("version", event.model_version),
            ("replica", event.replica),
            ("time", event.occurred_at),
            ("latency_ms", event.latency_ms),
            ("classes", classes),
            ("run_id", lineage.run_id),
            ("dataset", lineage.dataset),
            ("dataset_version", lineage.dataset_version),
            ("content_hash", lineage.content_hash),
            ("log_id", log_id),
        ):
            columns[name].extend([value] * count)
        columns["prediction"].extend(event.predictions)
        columns["probabilities"].extend(event.probabilities or [None] * count)
        given = event.features or {}
        for name, values in features.items():
            values.extend(given.get(name) or [None] * count)
    types = {
        "request_id": pa.string(),
        "row": pa.int64(),
        "source": pa.string(),
        "model": pa.string(),
        "version": pa.int64(),
        "replica": pa.string(),
        "time": TIME,
        "latency_ms": pa.float64(),
        "prediction": None,
        "probabilities": pa.list_(pa.float64()),
        "classes": pa.list_(pa.string()),
        "run_id": pa.string(),
        "dataset": pa.string(),
        "dataset_version": pa.int64(),
        "content_hash": pa.string(),
        "log_id": pa.string(),
    }
    arrays = {name: pa.array(columns[name], types[name]) for name in RECORD_COLUMNS}
    if kept and names:
        arrays["features"] = struct_of(features)
    return pa.table(arrays)


def struct_of(columns: dict[str, Sequence[Any]] | pa.Table) -> pa.StructArray | None:
    """The feature values as one struct column (None for no columns)."""
    if isinstance(columns, pa.Table):
        if not columns.num_columns:
            return None
        arrays = [c.combine_chunks() for c in columns.columns]
        return pa.StructArray.from_arrays(arrays, names=columns.column_names)
    if not columns:
        return None
    return pa.StructArray.from_arrays(
        [pa.array(list(v)) for v in columns.values()], names=list(columns)
    )


def table_of(rows: Rows) -> pa.Table:
    """One record per row."""
    count = len(rows.request_ids)
    lineage = rows.lineage

    def const(value: Any, kind: pa.DataType) -> pa.Array:
        return pa.repeat(pa.scalar(value, kind), count)  # in C: no list of `count` values

    classes = None if rows.classes is None else [str(c) for c in rows.classes]
    probabilities = rows.probabilities
    columns: dict[str, Any] = {
        "request_id": rows.request_ids,
        "row": rows.rows,
        "source": const(rows.source, pa.string()),
        "model": const(rows.model, pa.string()),
        "version": const(rows.version, pa.int64()),
        "replica": const(rows.replica, pa.string()),
        "time": const(rows.time, TIME),
        "latency_ms": const(rows.latency_ms, pa.float64()),
        "prediction": rows.predictions,
        "probabilities": (
            probabilities if probabilities is not None else const(None, pa.list_(pa.float64()))
        ),
        "classes": _repeat_list(classes, count),
        "run_id": const(lineage.run_id, pa.string()),
        "dataset": const(lineage.dataset, pa.string()),
        "dataset_version": const(lineage.dataset_version, pa.int64()),
        "content_hash": const(lineage.content_hash, pa.string()),
        "log_id": const(rows.log_id, pa.string()),
    }
    if rows.input_uri:
        columns["input_uri"] = const(rows.input_uri, pa.string())
    if rows.features is not None:
        columns["features"] = rows.features
    return pa.table(columns)


def _repeat_list(values: list[str] | None, count: int) -> pa.Array:
    """`values` as the list of each of `count` rows (pa.repeat of a list scalar takes 35 ms
    for 100,000 rows; offsets over the repeated values, a millisecond)."""
    kind = pa.list_(pa.string())
    if values is None:
        return pa.nulls(count, kind)
    width = len(values)
    offsets = pa.array(np.arange(count + 1, dtype=np.int32) * width)
    flat = pa.array(values, pa.string()).take(np.tile(np.arange(width), count))
    return pa.ListArray.from_arrays(offsets, flat, type=kind)


# --- writing -------------------------------------------------------------------------------------


def write_part(path: Path, table: pa.Table) -> None:
    """Write one part file, whole or not at all (its name says what it holds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, use_dictionary=partmerge.dictionary_columns(table.schema))


def online_part(store_root: Path, model: str, day: date, first: str, last: str) -> Path:
    return partition(store_root, model, day) / f"part-{first}-{last}.parquet"


def batch_part(store_root: Path, model: str, day: date, job_id: str, chunk: int) -> Path:
    return partition(store_root, model, day) / f"part-batch-{job_id}-{chunk:06d}.parquet"


def prune(store_root: Path, keep_days: int, today: date | None = None) -> list[Path]:
    """Remove the date partitions older than `keep_days` (0 keeps everything); those removed."""
    if keep_days <= 0:
        return []
    oldest = (today or datetime.now(UTC).date()) - timedelta(days=keep_days - 1)
    removed = []
    for directory in sorted(log_root(store_root).glob("*/date=*")):
        try:
            day = date.fromisoformat(directory.name.removeprefix("date="))
        except ValueError:
            continue
        if day < oldest:
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


# --- reading -------------------------------------------------------------------------------------


def log_files(
    directory: Path, since: datetime | None = None, until: datetime | None = None
) -> list[str]:
    """The part files under `directory`'s date partitions, only those of the days the window
    `[since, until)` touches: a day's partition holds the records of that day (UTC), so the
    others need not even be opened."""
    first = None if since is None else since.astimezone(UTC).date()
    last = None if until is None else until.astimezone(UTC).date()
    found: list[str] = []
    for partition_dir in directory.glob("date=*"):
        try:
            day = date.fromisoformat(partition_dir.name.removeprefix("date="))
        except ValueError:
            continue
        if (first is None or day >= first) and (last is None or day <= last):
            found.extend(str(p) for p in partmerge.visible(partition_dir))
    return sorted(found)


def dataset_of(files: Sequence[str]) -> ds.Dataset:
    # Each file's own schema, unified: a model's features may change from version to version.
    schemas = [pq.read_schema(f) for f in files]
    return ds.dataset(
        list(files),
        format="parquet",
        schema=pa.unify_schemas(schemas, promote_options="permissive").remove_metadata(),
    )


def read_log(
    store_root: Path,
    model: str,
    since: datetime | None = None,
    until: datetime | None = None,
    columns: Sequence[str] | None = None,
    *,
    shadow: bool = False,
) -> pa.Table:
    """A model's records with `since <= time < until` (either bound may be left out), in time
    order: an empty table when nothing is logged. What production answered, unless `shadow`:
    then its challengers' records too."""
    files = log_files(model_dir(store_root, model), since, until)
    if not files:
        return pa.table({name: pa.array([], pa.string()) for name in columns or ("request_id",)})
    expression = ds.field("time").is_valid()
    if not shadow:
        expression &= ds.field("source") != SHADOW
    if since is not None:
        expression &= ds.field("time") >= pa.scalar(since, TIME)
    if until is not None:
        expression &= ds.field("time") < pa.scalar(until, TIME)
    table = dataset_of(files).to_table(
        columns=list(columns) if columns else None, filter=expression
    )
    if "time" not in table.column_names:
        return table
    return table.sort_by([("time", "ascending"), ("log_id", "ascending"), ("row", "ascending")])


def find_request(store_root: Path, request_id: str) -> pa.Table:
    """Every record of request `request_id`, whatever the model."""
    found: list[pa.Table] = []
    for directory in sorted(log_root(store_root).glob("*")):
        files = log_files(directory)
        if files:
            table = dataset_of(files).to_table(filter=ds.field("request_id") == request_id)
            if table.num_rows:
                found.append(table)
    if not found:
        return pa.table({"request_id": pa.array([], pa.string())})
    return pa.concat_tables(found, promote_options="permissive")


def by_day(table: pa.Table) -> dict[date, pa.Table]:
    """A model's records split by their day (UTC): one partition each."""
    days = pc.cast(table["time"], pa.date32()) if table.num_rows else pa.array([], pa.date32())
    split: dict[date, pa.Table] = {}
    for day in pc.unique(days).to_pylist():
        split[day] = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
    return split
