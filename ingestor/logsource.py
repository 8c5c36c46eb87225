"""A model's labelled prediction log as a source: what production answered, with the label
that came back for it as the target, after the rows of a dataset version (docs/feedback.md,
retraining on the log).

A logged row has the model's features only. The spec's target is its label, the spec's
timestamp is when it was answered, and any other column is null (a spec that retrains on its
log must make those nullable: shared/datasets.py says so when the spec is read). The rows then
go through the usual validation, quarantine, content hash and commit, like any source's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingestor.sources import content_hasher
from shared import labels, predlog
from shared.datasets import DatasetSpec
from shared.errors import SourceRejected, VersionNotFound
from shared.events import PredictionLogSource
from shared.feature_store import FeatureStore

CHUNK_ROWS = 100_000  # the base version is handed on in slices, as a CSV is read in blocks


class PredictionLogReader:
    """The base version's rows, then the labelled log's (SourceReader)."""

    kind = "prediction_log"

    def __init__(
        self, source: PredictionLogSource, spec: DatasetSpec, store: FeatureStore, log_root: Path
    ) -> None:
        self.source = source
        self.spec = spec
        self.store = store
        self.log_root = log_root  # the prediction log's root (feature_store_root)
        self._hash = content_hasher()

    def chunks(self) -> Iterator[pa.Table]:
        base = self._base()
        logged = labelled_rows(self.log_root, self.spec, self.source)
        if logged.num_rows == 0:
            raise SourceRejected(
                f"the prediction log of {self.source.model} has no labelled row with its "
                f"features answered in [{self.source.since.isoformat()}, "
                f"{self.source.until.isoformat()})"
            )
        # What the version is made of: the base's content (its hash) and the log's rows.
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, logged.schema) as writer:
            writer.write_table(logged)
        self._hash.update(sink.getvalue())
        if base is not None:
            for start in range(0, base.num_rows, CHUNK_ROWS):
                yield base.slice(start, CHUNK_ROWS)
        yield logged

    def digest(self) -> str:
        return str(self._hash.hexdigest())

    def _base(self) -> pa.Table | None:
        version = self.source.base_version
        if version is None:
            return None
        try:
            info = self.store.get(self.spec.name, version)
        except VersionNotFound as exc:
            raise SourceRejected(str(exc)) from exc
        self._hash.update(f"{self.spec.name}@{version}:{info.content_hash}\n".encode())
        return self.store.read(self.spec.name, version).select(list(self.spec.column_names))


def labelled_rows(root: Path, spec: DatasetSpec, source: PredictionLogSource) -> pa.Table:
    """The spec's columns for every logged row of the window that has features and a label
    that arrived before `until`, in answer order (so the same window gives the same bytes)."""
    logged = predlog.read_log(root, source.model, source.since, source.until)
    if "features" not in logged.column_names or logged.num_rows == 0:
        return _empty(spec)
    logged = labels.latest(logged.filter(pc.is_valid(logged["features"])), "time")
    truth = labels.read_joined(root, source.model, since=source.since)
    if truth.num_rows == 0:
        return _empty(spec)
    truth = truth.filter(pc.less(truth["labelled_at"], pa.scalar(source.until, predlog.TIME)))
    keys = logged.select(["request_id", "row"]).append_column(
        "_logged", pa.array(np.arange(logged.num_rows), pa.int64())
    )
    found = truth.select(["request_id", "row", "label", "label_value"]).join(
        keys, ["request_id", "row"], join_type="inner"
    )
    rows = logged.take(found["_logged"])
    order = pc.sort_indices(
        pa.table({"time": rows["time"], "request_id": rows["request_id"], "row": rows["row"]}),
        sort_keys=[("time", "ascending"), ("request_id", "ascending"), ("row", "ascending")],
    )
    rows, found = rows.take(order), found.take(order)
    features = rows["features"].combine_chunks()
    present = {features.type.field(i).name: i for i in range(features.type.num_fields)}
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    for col in spec.columns:
        if col.name == spec.target:
            columns[col.name] = found["label_value" if col.type == "float" else "label"]
        elif col.name == spec.timestamp:
            columns[col.name] = rows["time"]
        elif col.name in present:
            columns[col.name] = features.field(present[col.name])
        else:
            columns[col.name] = pa.nulls(rows.num_rows, col.arrow_type)
    return pa.table(columns)


def _empty(spec: DatasetSpec) -> pa.Table:
    return pa.table({c.name: pa.array([], c.arrow_type) for c in spec.columns})
