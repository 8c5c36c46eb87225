"""Ground truth joined to the prediction log, under the feature store's root:

    _labels/<model>/date=YYYY-MM-DD/part-<first>-<last>.parquet    labels with their predictions
    _labels/<model>/unmatched/part-<first>-<last>.parquet          labels of unknown requests

Named by the `labels-arrived` entries they come from, and written whole or not at all, like
the prediction log (shared/predlog.py): a batch joined again writes the same files.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from shared import predlog
from shared.datasets import DatasetSpec
from shared.events import Label, LabelsArrived, LabelValue, derived_event_id

LABELS_DIR = "_labels"
# The same labels joined to what a challenger said of the same rows (docs/rollout.md).
SHADOW_LABELS_DIR = "_labels_shadow"
LABELS_PER_EVENT = 10_000  # LabelsArrived's limit
# What a label is joined with: the prediction log's columns that judge the answer.
LOGGED = ("request_id", "row", "version", "prediction", "probabilities", "classes", "time")


def model_dir(store_root: Path, model: str, *, shadow: bool = False) -> Path:
    root = store_root / (SHADOW_LABELS_DIR if shadow else LABELS_DIR)
    return root / urllib.parse.quote(model, safe="")


def joined_part(
    store_root: Path, model: str, day: date, first: str, last: str, *, shadow: bool = False
) -> Path:
    directory = model_dir(store_root, model, shadow=shadow)
    return directory / f"date={day.isoformat()}" / f"part-{first}-{last}.parquet"


def unmatched_part(store_root: Path, model: str, first: str, last: str) -> Path:
    return model_dir(store_root, model) / "unmatched" / f"part-{first}-{last}.parquet"


def canonical(value: LabelValue) -> str:
    """A label or a prediction as text, so that the two compare: `1` and `1`, `true` and
    `true`, `"yes"` and `"yes"` (pyarrow's cast of a prediction column gives the same)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)


def label_table(events: Sequence[tuple[LabelsArrived, str]]) -> pa.Table:
    """The labels of one model's events, one row each: the key, the label as text and as a
    number (for regressors), when it arrived, and the entry it came from."""
    ids, rows, texts, values, times, entries = [], [], [], [], [], []
    for event, entry_id in events:
        for label in event.labels:
            ids.append(label.request_id)
            rows.append(label.row)
            texts.append(canonical(label.label))
            values.append(_number(label.label))
            times.append(event.occurred_at)
            entries.append(entry_id)
    return pa.table(
        {
            "request_id": pa.array(ids, pa.string()),
            "row": pa.array(rows, pa.int64()),
            "label": pa.array(texts, pa.string()),
            "label_value": pa.array(values, pa.float64()),
            "labelled_at": pa.array(times, predlog.TIME),
            "label_entry": pa.array(entries, pa.string()),
        }
    )


def label_events(
    spec: DatasetSpec, table: pa.Table, version: int, correlation_id: str
) -> list[LabelsArrived]:
    """A labels dataset's version (`spec.labels`) as `labels-arrived` events of at most 10,000
    labels each, with ids derived from the version: a redelivery publishes copies."""
    assert spec.labels is not None
    keys = spec.labels
    ids = [str(v) for v in table[keys.request_id].to_pylist()]
    rows = table[keys.row].to_pylist() if keys.row else [0] * len(ids)
    values = table[spec.target].to_pylist()
    events = []
    for chunk, start in enumerate(range(0, len(ids), LABELS_PER_EVENT)):
        stop = start + LABELS_PER_EVENT
        batch = [
            Label(request_id=i, row=int(r or 0), label=v)
            for i, r, v in zip(ids[start:stop], rows[start:stop], values[start:stop], strict=True)
            if v is not None
        ]
        if batch:
            events.append(
                LabelsArrived(
                    event_id=derived_event_id(LabelsArrived.stream, spec.name, version, chunk),
                    correlation_id=correlation_id,
                    model_name=keys.model,
                    labels=batch,
                )
            )
    return events


def _number(value: LabelValue) -> float | None:
    if isinstance(value, (bool, str)):
        return None
    return float(value)


def lookup(store_root: Path, model: str, request_ids: Sequence[str]) -> tuple[pa.Table, pa.Table]:
    """The logged rows of `request_ids`, in one pyarrow scan filtered on the ids: (what the
    clients were answered, what challengers said of the same rows)."""
    files = predlog.log_files(predlog.model_dir(store_root, model))
    if not files:
        empty = pa.table({"request_id": pa.array([], pa.string()), "row": pa.array([], pa.int64())})
        return empty, empty
    wanted = ds.field("request_id").isin(pa.array(sorted(set(request_ids)), pa.string()))
    found = predlog.dataset_of(files).to_table(columns=[*LOGGED, "source"], filter=wanted)
    shadow = pc.equal(found["source"], predlog.SHADOW)
    found, kept = found.drop_columns(["source"]), pc.invert(shadow)
    return found.filter(kept), found.filter(shadow)


def join(labels: pa.Table, logged: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(labels with the prediction they judge, labels that match no logged row). A request
    answered twice (a client that reused its id) keeps its latest answer."""
    if logged.num_rows == 0:
        return labels.slice(0, 0), labels
    logged = latest(logged, "time")
    answer = logged["prediction"]
    number = pa.types.is_integer(answer.type) or pa.types.is_floating(answer.type)
    value = pc.cast(answer, pa.float64()) if number else pa.nulls(len(answer), pa.float64())
    logged = (
        logged.set_column(
            logged.schema.get_field_index("prediction"), "prediction", as_text(answer)
        )
        .append_column("prediction_value", value)
        .rename_columns({"time": "predicted_at"})
    )
    # Joined on the keys and a row index alone (Acero joins no list columns, such as the
    # probabilities); the logged columns are then taken by that index.
    keys = logged.select(["request_id", "row"]).append_column(
        "_logged", pa.array(np.arange(logged.num_rows), pa.int64())
    )
    joined = labels.join(keys, ["request_id", "row"], join_type="left outer")
    found = pc.is_valid(joined["_logged"])
    hits = joined.filter(found)
    picked = logged.drop_columns(["request_id", "row"]).take(hits["_logged"])
    matched = hits.drop_columns(["_logged"])
    for name in picked.column_names:
        matched = matched.append_column(name, picked[name])
    unmatched = joined.filter(pc.invert(found)).select(labels.column_names)
    return matched.combine_chunks(), unmatched


def latest(table: pa.Table, by: str) -> pa.Table:
    """Each (request_id, row) of `table` once: the row with the greatest `by`."""
    if table.num_rows == 0:
        return table
    table = table.sort_by([(by, "descending")])
    keys = pc.binary_join_element_wise(
        table["request_id"], pc.cast(table["row"], pa.string()), "\x1f"
    )
    return table.take(pc.index_in(pc.unique(keys), keys))


def as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_floating(column.type):
        # 1.0 → "1", as canonical() does for labels: a class predicted as a float still matches.
        integral = pc.equal(column, pc.floor(column))
        as_int = pc.cast(pc.cast(column, pa.int64(), safe=False), pa.string())
        return pc.if_else(integral, as_int, pc.cast(column, pa.string()))
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column
    return pc.cast(column, pa.string())


def read_joined(
    store_root: Path, model: str, since: datetime | None = None, *, shadow: bool = False
) -> pa.Table:
    """A model's labels with their predictions (labelled since `since`); each (request, row)
    once, its latest label. With `shadow`, with what its challengers said instead."""
    directory = model_dir(store_root, model, shadow=shadow)
    files = predlog.log_files(directory, since)  # the same layout
    if not files:
        return pa.table({"request_id": pa.array([], pa.string())})
    expression = ds.field("labelled_at").is_valid()
    if since is not None:
        expression &= ds.field("labelled_at") >= pa.scalar(since, predlog.TIME)
    table = predlog.dataset_of(files).to_table(filter=expression)
    return latest(table.sort_by([("label_entry", "descending")]), "labelled_at")


def models(store_root: Path) -> list[str]:
    root = store_root / LABELS_DIR
    return sorted(urllib.parse.unquote(p.name) for p in root.glob("*") if p.is_dir())
