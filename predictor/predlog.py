"""What a replica puts in the prediction log (shared/predlog.py): online batches as one
`predictions` entry each, appended with the answers; batch-scored chunks as Parquet parts
written beside their results.

Sampling is by request id (every row of a request is in or out), so that a sample is the same
whichever replica answers and whatever else was in the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from predictor.cache import Served
from shared import predlog
from shared.events import (
    BatchPredicted,
    Lineage,
    PredictionRequested,
    PredictionsLogged,
    ScoreChunkRequested,
)


@dataclass(frozen=True)
class LogPolicy:
    """What the online path logs (PredictorSettings.log_*)."""

    sample: float
    maxlen: int
    keeps_features: Callable[[str], bool]


def spans(request: PredictionRequested) -> list[tuple[str, int]]:
    """(request id, rows) of each HTTP request in a batch, in row order."""
    return list(request.requests) or [(str(request.event_id), request.rows)]


def online_entry(
    requests: Sequence[PredictionRequested],
    answers: Sequence[BatchPredicted],
    lineage: Lineage,
    *,
    replica: str,
    latency_ms: float,
    sample: float,
    features: bool,
) -> PredictionsLogged | None:
    """The log entry of one model's answered batches: the sampled rows of those answered
    without a failure; None when there are none."""
    ids: list[tuple[str, int]] = []
    columns: dict[str, list[Any]] = {}
    predictions: list[Any] = []
    probabilities: list[list[float]] | None = None
    first: BatchPredicted | None = None
    for request, batch in zip(requests, answers, strict=True):
        if batch.failure is not None:
            continue
        start = 0
        for request_id, rows in spans(request):
            stop = start + rows
            if predlog.sampled(request_id, sample):
                first = first or batch
                ids.append((request_id, rows))
                predictions.extend(batch.predictions[start:stop])
                if batch.probabilities is not None:
                    probabilities = probabilities or []
                    probabilities.extend(batch.probabilities[start:stop])
                if features:
                    for name, values in request.columns.items():
                        columns.setdefault(name, []).extend(values[start:stop])
            start = stop
    if first is None or first.model_version is None:
        return None
    # Built from validated answers and requests: nothing to validate again (the loggers
    # validate what they read, as for any entry).
    return PredictionsLogged.model_construct(
        model_name=first.model_name,
        model_version=first.model_version,
        replica=replica,
        latency_ms=latency_ms,
        requests=ids,
        features=columns if features else None,
        predictions=predictions,
        probabilities=probabilities,
        classes=first.classes,
        lineage=lineage,
    )


def chunk_part(
    store_root: Path,
    served: Served,
    chunk: ScoreChunkRequested,
    features: pa.Table | None,
    results: pa.Table,
    *,
    latency_ms: float,
    replica: str,
) -> Path:
    """Log a scored chunk's rows as one Parquet part (named by the job and chunk, so a chunk
    scored twice writes the same file again); its path. Dated by the chunk's event, for the
    same reason."""
    when = chunk.occurred_at.astimezone(UTC)
    count = results.num_rows
    probabilities = _probabilities(served, results)
    rows = predlog.Rows(
        model=served.name,
        version=served.version,
        source="batch",
        replica=replica,
        time=when,
        latency_ms=latency_ms,
        request_ids=pa.repeat(pa.scalar(chunk.job_id, pa.string()), count),
        rows=results["row"].combine_chunks(),
        predictions=_predictions(results),
        probabilities=probabilities,
        classes=served.classes,
        lineage=served.lineage,
        log_id=f"{chunk.job_id}/{chunk.chunk}",
        features=None if features is None else predlog.struct_of(features),
        input_uri=chunk.input_path,
    )
    path = predlog.batch_part(store_root, served.name, when.date(), chunk.job_id, chunk.chunk)
    predlog.write_part(path, predlog.table_of(rows))
    return path


def _predictions(results: pa.Table) -> pa.Array:
    """The result's prediction: its one column, or a struct of its several (`prediction_*`)."""
    if "prediction" in results.column_names:
        return results["prediction"].combine_chunks()
    names = [n for n in results.column_names if n.startswith("prediction_")]
    arrays = [results[n].combine_chunks() for n in names]
    return pa.StructArray.from_arrays(arrays, names=[n.removeprefix("prediction_") for n in names])


def _probabilities(served: Served, results: pa.Table) -> pa.Array | None:
    """The result's `probability_<class>` columns as one list column (vectorised)."""
    if served.classes is None:
        return None
    names = [f"probability_{label}" for label in served.classes]
    matrix = np.column_stack([results[name].to_numpy() for name in names]).astype(np.float64)
    flat = pa.array(matrix.ravel())
    offsets = pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)
