"""The ingest use case, free of any broker: source → validation → feature-store version.

`ingest` returns the event to publish next (DataIngested or DataRejected). It raises only
for what the caller must decide about: UnknownDataset (a poison message) and
SourceUnavailable (worth retrying).
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from ingestor.logsource import PredictionLogReader
from ingestor.sources import Progress, SourceReader, content_hasher, open_source
from ingestor.validate import validate_chunk
from shared.datasets import DatasetSpec, arrow_schema, load_spec
from shared.errors import BatchRejected, SourceRejected
from shared.events import (
    DataArrived,
    DataIngested,
    DataRejected,
    PredictionLogSource,
    derived_event_id,
    describe_source,
)
from shared.feature_store import FeatureStore, StagedVersion, announcement
from shared.settings import IngestorSettings

log = logging.getLogger(__name__)


def ingest(
    event: DataArrived,
    settings: IngestorSettings,
    store: FeatureStore,
    progress: Progress | None = None,
) -> DataIngested | DataRejected:
    spec = load_spec(settings.common.datasets_dir, event.dataset)
    shown = describe_source(event.source)
    started = time.perf_counter()
    try:
        reader = _reader(event, spec, settings, store, progress)
        ingested = _ingest(
            event, spec=spec, reader=reader, settings=settings, store=store, shown=shown
        )
    except SourceRejected as exc:
        return _rejected(event, shown, BatchRejected("source_error", str(exc)))
    except BatchRejected as exc:
        return _rejected(event, shown, exc)
    log.info(
        "ingested %s v%d: %d rows, %d quarantined, new=%s in %.2fs",
        ingested.dataset,
        ingested.version,
        ingested.rows,
        ingested.quarantined_rows,
        ingested.new_version,
        time.perf_counter() - started,
    )
    return ingested


def _reader(
    event: DataArrived,
    spec: DatasetSpec,
    settings: IngestorSettings,
    store: FeatureStore,
    progress: Progress | None,
) -> SourceReader:
    source = event.source
    if not isinstance(source, PredictionLogSource):
        return open_source(source, settings, progress)
    if source.model != spec.model_name:
        raise SourceRejected(
            f"the prediction log of {source.model!r} is not {event.dataset}'s: its model is "
            f"{spec.model_name!r}"
        )
    return PredictionLogReader(source, spec, store, settings.common.feature_store_root)


def _ingest(
    event: DataArrived,
    *,
    spec: DatasetSpec,
    reader: SourceReader,
    settings: IngestorSettings,
    store: FeatureStore,
    shown: str,
) -> DataIngested:
    total = bad = 0
    with store.stage(spec.name, arrow_schema(spec)) as staged:
        for chunk in reader.chunks():
            check_columns(spec, chunk.column_names, total, bad)
            columns = chunk.select(list(spec.column_names))
            result = validate_chunk(spec, columns, total + 1, detect_drift=total == 0)
            if total == 0 and result.wrong_type:
                raise BatchRejected(
                    "schema_drift",
                    "columns of the wrong type",
                    tuple(f"{name}: {why}" for name, why in result.wrong_type.items()),
                )
            staged.write(result.accepted, result.quarantine)
            total += chunk.num_rows
            bad += result.bad_rows
        if total == 0:
            raise BatchRejected("empty", "the source has no rows")
        limit = bad_row_limit(spec, settings)
        if bad / total > limit:
            raise BatchRejected(
                "too_many_bad_rows",
                f"{bad} of {total} rows ({bad / total:.1%}) failed validation; "
                f"the limit is {limit:.1%}",
                _top_reasons(staged),
                total,
                bad,
            )
        content_hash = _content_hash(spec, reader)
        info, created = store.commit(
            spec.name,
            staged,
            content_hash,
            quarantined_rows=bad,
            source=shown,
            spec_fingerprint=spec.fingerprint(),
        )
    return announcement(
        info,
        # The same version is always announced with the same id: consumers drop repeats.
        event_id=derived_event_id(DataIngested.stream, info.dataset, info.version),
        correlation_id=event.correlation_id,
        new_version=created,
        source=shown,
    )


def check_columns(spec: DatasetSpec, found: list[str], total: int = 0, bad: int = 0) -> None:
    """Schema drift: a missing, unexpected or repeated column rejects the whole batch."""
    expected = set(spec.column_names)
    present = set(found)
    problems = [f"missing column {c!r}" for c in spec.column_names if c not in present]
    problems += [f"unexpected column {c!r}" for c in found if c not in expected]
    problems += [f"repeated column {c!r}" for c, n in Counter(found).items() if n > 1]
    if problems:
        raise BatchRejected(
            "schema_drift", "the columns do not match the dataset spec", tuple(problems), total, bad
        )


def bad_row_limit(spec: DatasetSpec, settings: IngestorSettings) -> float:
    """The largest fraction of bad rows a batch may have: the spec's, else the setting's."""
    if spec.max_bad_fraction is not None:
        return spec.max_bad_fraction
    return settings.max_bad_fraction


def _top_reasons(staged: StagedVersion) -> tuple[str, ...]:
    """The most frequent quarantine reasons, to explain a rejection."""
    table = staged.read_quarantine(columns=["column", "reason"])
    counts = table.group_by(["column", "reason"]).aggregate([([], "count_all")])
    top = counts.sort_by([("count_all", "descending")]).slice(0, 5).to_pylist()
    return tuple(f"{r['column']}: {r['reason']} ({r['count_all']} rows)" for r in top)


def _content_hash(spec: DatasetSpec, reader: SourceReader) -> str:
    """The same spec and the same source content give the same hash, hence no new version."""
    sha = content_hasher()
    for part in (spec.fingerprint(), reader.kind, reader.digest()):
        sha.update(part.encode())
        sha.update(b"\n")
    return str(sha.hexdigest())


def _rejected(event: DataArrived, shown: str, exc: BatchRejected) -> DataRejected:
    # A source error has no details: log the reason alone, not an empty "()" after it.
    explained = "; ".join((exc.reason, *exc.details))
    log.warning("rejected %s from %s: %s", event.dataset, shown, explained)
    return DataRejected(
        event_id=derived_event_id(DataRejected.stream, event.event_id),
        correlation_id=event.correlation_id,
        dataset=event.dataset,
        kind=exc.kind,
        reason=exc.reason,
        details=exc.details,
        total_rows=exc.total_rows,
        bad_rows=exc.bad_rows,
        source=shown,
    )
