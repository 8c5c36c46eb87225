"""Batch scoring on the predictor replicas: `score-requested` and `score-chunks` (group
`predictor`) → part files → one output → `scored`, or `score-rejected`.

Handlers are thin: they parse, call the plain functions of predictor/scoring.py in a thread
(CPU and disk work off the event loop, so leases keep being renewed), and publish the next
event. Both streams go through shared.delivery: acked only after the effect is durable,
reclaimed from a dead replica after its lease, dead-lettered after too many failures.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio.to_thread
import redis.asyncio as aioredis
from faststream.redis import RedisBroker

from predictor import predlog, scoring
from predictor.cache import Served
from predictor.metrics import PredictorMetrics
from predictor.scoring_jobs import ChunkLedger, JobBook
from predictor.service import Predictor
from shared.broker import ensure_group
from shared.delivery import Delivery, RedisLedger, subscribe
from shared.errors import ScoreInputRejected
from shared.events import (
    ScoreChunkRequested,
    Scored,
    ScoreRejected,
    ScoreRequested,
    derived_event_id,
)
from shared.feature_store import FeatureStore
from shared.replication import Replication
from shared.settings import PredictorSettings

GROUP = "predictor"
SETTLED = ("done", "rejected")
log = logging.getLogger(__name__)


def scored_event_id(job_id: str) -> Any:
    """The `scored` event of a job always has this id: a retried assembly publishes a copy
    consumers can drop."""
    return derived_event_id("scored", job_id)


class Jobs(Protocol):
    """The jobs' state, shared by the replicas (predictor/scoring_jobs.py: JobBook)."""

    async def exists(self, job_id: str) -> bool: ...

    async def status(self, job_id: str) -> str | None: ...

    async def plan(self, fields: dict[str, Any], chunks: list[ScoreChunkRequested]) -> bool: ...

    async def record(self, fields: dict[str, Any]) -> None: ...

    async def chunk_done(self, job_id: str, chunk: int) -> tuple[int, str | None]: ...

    async def finish(self, job_id: str, output_uri: str) -> None: ...


class Publisher(Protocol):
    """Where an event goes next (a FastStream publisher)."""

    async def publish(self, message: Any) -> Any: ...


@dataclass(frozen=True)
class Scorer:
    predictor: Predictor
    metrics: PredictorMetrics
    settings: PredictorSettings
    store: FeatureStore
    jobs: Jobs
    scored: Publisher
    rejected: Publisher
    # Loads a model this replica may serve but does not yet (its alias was set a moment ago
    # and no converge has run here): a job for it is scored, not rejected.
    catch_up: Callable[[str], Awaitable[None]] | None = None

    # --- score-requested ---------------------------------------------------------------------

    async def on_requested(self, event: ScoreRequested) -> None:
        if await self.jobs.exists(event.job_id):  # planned (or refused) by an earlier delivery
            return
        name = event.model_name
        if self.catch_up is not None and self.predictor.cache.version(name) is None:
            await self.catch_up(name)
        try:
            if event.rows is not None:
                await self._score_inline(event)
            else:
                await self._plan(event)
        except ScoreInputRejected as exc:
            await self._reject(event, str(exc))

    def _live(self, name: str) -> Served:
        """The version in service: batch jobs score with what the online path serves."""
        if self.predictor.cache.version(name) is not None:
            return self.predictor.cache.get(name)
        if name in self.predictor.specs:  # a dataset of ours, not trained or promoted yet
            raise ScoreInputRejected(f"no version of model {name!r} is in service")
        raise ScoreInputRejected(f"unknown model {name!r}: no version of it is in service")

    async def _score_inline(self, event: ScoreRequested) -> None:
        assert event.rows is not None
        served = self._live(event.model_name)
        work = functools.partial(
            scoring.score_rows, served, event.rows, self.settings.max_inline_rows
        )
        predictions = await anyio.to_thread.run_sync(work)
        self.metrics.rows.labels(event.model_name, "batch").inc(len(predictions))
        await self.scored.publish(
            Scored(
                event_id=scored_event_id(event.job_id),
                correlation_id=event.correlation_id,
                job_id=event.job_id,
                model_name=event.model_name,
                model_version=served.version,
                rows=len(predictions),
                predictions=tuple(predictions),
            )
        )
        await self.jobs.record(
            {
                "job_id": event.job_id,
                "status": "done",
                "model_name": event.model_name,
                "model_version": served.version,
                "rows": len(predictions),
            }
        )

    async def _plan(self, event: ScoreRequested) -> None:
        assert event.input is not None
        served = self._live(event.model_name)  # the version pinned for every chunk

        def inspect() -> scoring.Source:
            assert event.input is not None
            path, output = scoring.resolve(
                event.job_id,
                event.input,
                self.settings.score_roots,
                self.store,
                self.settings.score_prefixes,
            )
            return scoring.inspect(path, output, served.schema)

        source = await anyio.to_thread.run_sync(inspect)
        ranges = scoring.plan_chunks(source.rows, self.settings.score_chunk_rows)
        chunks = [
            ScoreChunkRequested(
                event_id=derived_event_id("score-chunk", event.job_id, index),
                correlation_id=event.correlation_id,
                job_id=event.job_id,
                model_name=event.model_name,
                model_version=served.version,
                chunk=index,
                chunks=len(ranges),
                start=start,
                stop=stop,
                input_path=str(source.path),
                output_path=str(source.output),
            )
            for index, (start, stop) in enumerate(ranges)
        ]
        plan = {
            "job_id": event.job_id,
            "model_name": event.model_name,
            "model_version": served.version,
            "rows": source.rows,
            "chunks": len(chunks),
            "input_uri": str(source.path),
        }
        if await self.jobs.plan(plan, chunks):
            log.info(
                "job %s: %d rows in %d chunks, %s v%d",
                event.job_id,
                source.rows,
                len(chunks),
                event.model_name,
                served.version,
            )

    async def _reject(self, event: ScoreRequested, reason: str) -> None:
        log.warning("job %s refused: %s", event.job_id, reason)
        await self.rejected.publish(
            ScoreRejected(
                event_id=derived_event_id("score-rejected", event.job_id),
                correlation_id=event.correlation_id,
                job_id=event.job_id,
                model_name=event.model_name,
                reason=reason,
            )
        )
        await self.jobs.record(
            {
                "job_id": event.job_id,
                "status": "rejected",
                "model_name": event.model_name,
                "error": reason,
            }
        )

    # --- score-chunks ------------------------------------------------------------------------

    async def on_chunk(self, chunk: ScoreChunkRequested) -> None:
        if await self.jobs.status(chunk.job_id) in SETTLED:  # a copy, or the job failed
            return
        output = chunk.output_path
        roots = [*self.settings.score_roots, self.settings.common.feature_store_root]
        prefixes = self.settings.score_prefixes
        scoring.check_chunk_paths(chunk.input_path, output, roots, prefixes)
        served = await anyio.to_thread.run_sync(
            self.predictor.model_for, chunk.model_name, chunk.model_version
        )
        part = scoring.part_path(output, chunk.job_id, chunk.chunk)
        started = time.perf_counter()
        rows = await anyio.to_thread.run_sync(self._score, served, chunk, part)
        log.debug(
            "job %s chunk %d: %d rows in %.3f s (%s)",
            chunk.job_id,
            chunk.chunk,
            rows,
            time.perf_counter() - started,
            served.runtime,
        )
        self.metrics.rows.labels(chunk.model_name, "batch").inc(rows)
        done, status = await self.jobs.chunk_done(chunk.job_id, chunk.chunk)
        if done >= chunk.chunks and status not in SETTLED:
            await self._finish(chunk, output)

    def _score(self, served: Served, chunk: ScoreChunkRequested, part: str) -> int:
        """Score the chunk into its part and, when predictions are logged, log its rows: both
        durable before the chunk is acked. The rows scored."""
        started = time.perf_counter()
        scored = scoring.score_chunk(served, chunk.input_path, (chunk.start, chunk.stop), part)
        if self.settings.log_predictions:
            keep = self.settings.log_batch_features and self.settings.logs_features(served.name)
            features = scored.inputs if keep else None
            latency_ms = (time.perf_counter() - started) * 1000
            predlog.chunk_part(
                self.settings.common.feature_store_root,
                served,
                chunk,
                features,
                scored.results,
                latency_ms=latency_ms,
                replica=self.settings.common.consumer_name,
            )
        return int(scored.results.num_rows)

    async def _finish(self, chunk: ScoreChunkRequested, output: str) -> None:
        """Assemble, publish, mark done, tidy up: in that order, so a crash anywhere is repaired
        by the chunk's redelivery (the parts stay until the job is marked done)."""
        work = functools.partial(scoring.assemble, output, chunk.job_id, chunk.chunks)
        rows = await anyio.to_thread.run_sync(work)
        await self.scored.publish(
            Scored(
                event_id=scored_event_id(chunk.job_id),
                correlation_id=chunk.correlation_id,
                job_id=chunk.job_id,
                model_name=chunk.model_name,
                model_version=chunk.model_version,
                rows=rows,
                output_uri=output,
            )
        )
        await self.jobs.finish(chunk.job_id, output)
        await anyio.to_thread.run_sync(scoring.remove_parts, output, chunk.job_id)
        log.info("job %s done: %d rows in %s", chunk.job_id, rows, output)


def wire_scoring(
    broker: RedisBroker,
    predictor: Predictor,
    metrics: PredictorMetrics,
    client: aioredis.Redis,
    settings: PredictorSettings,
    *,
    catch_up: Callable[[str], Awaitable[None]] | None = None,
) -> Callable[[], Awaitable[None]]:
    """Register batch scoring's subscribers and publishers on `broker`; returns the start-up
    hook that creates the consumer groups (run it before the broker starts)."""
    common = settings.common
    scored = broker.publisher(stream=Scored.stream, schema=Scored, description=Scored.__doc__)
    rejected = broker.publisher(
        stream=ScoreRejected.stream, schema=ScoreRejected, description=ScoreRejected.__doc__
    )
    # Documented only: chunks are XADDed with the job's hash, in one MULTI (predictor/scoring_jobs).
    broker.publisher(
        stream=ScoreChunkRequested.stream,
        schema=ScoreChunkRequested,
        description=ScoreChunkRequested.__doc__,
    )
    jobs = JobBook(client, common.done_ttl_s)
    store = FeatureStore(common.feature_store_location)
    scorer = Scorer(predictor, metrics, settings, store, jobs, scored, rejected, catch_up)
    handlers: list[tuple[Any, Callable[[Any], Awaitable[None]]]] = [
        (ScoreRequested, scorer.on_requested),
        (ScoreChunkRequested, scorer.on_chunk),
    ]
    replication = Replication(client, common.redis_wait_replicas, common.redis_wait_ms)
    for event_type, work in handlers:
        args = (client, event_type.stream, GROUP, common.consumer_name, common.done_ttl_s)
        # A chunk given up on fails its job; a request given up on has no job yet.
        ledger = (
            ChunkLedger(*args, jobs) if event_type is ScoreChunkRequested else RedisLedger(*args)
        )
        delivery = Delivery(
            ledger, event_type.stream, GROUP, common.consumer_name, common, replication
        )
        subscribe(broker, delivery, event_type, work)

    async def create_groups() -> None:
        for event_type, _ in handlers:
            await ensure_group(client, event_type.stream, GROUP)

    return create_groups
