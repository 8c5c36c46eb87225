"""Online predictions: batches from `predict-requests`, answered on each gateway's channel.

The gateway coalesces concurrent HTTP requests into one `PredictionRequested` entry; every
replica reads the stream in group `predictor`, so the replicas share the load. Entries are
read with NOACK: an answer is worth something only before its deadline, and a replica that
dies holding a batch costs those requests a 504 from the gateway's timeout; redelivering the
batch later would answer nobody. So nothing is ever pending here, and nothing is reclaimed.

This is a plain redis-py loop rather than a FastStream subscriber: FastStream hands a handler
one message at a time (about 3k messages/s here), and several batches of the same model taken
in one read are predicted in one call, which is what makes a forest cheap per row.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import anyio.to_thread
import numpy as np
import pandas as pd
import redis.asyncio as aioredis
from pydantic import ValidationError

from predictor import shadow
from predictor.metrics import PredictorMetrics
from predictor.predlog import LogPolicy, online_entry
from predictor.runtimes import ONNX
from predictor.service import Prediction, Predictor
from shared.broker import ensure_group, is_cluster
from shared.errors import NoModelInService
from shared.events import (
    BatchPredicted,
    PredictionRequested,
    PredictionsFailed,
    PredictionsLogged,
)
from shared.registry import CHALLENGER
from shared.wire import Refused, dead_letter, entry_body, entry_fields

GROUP = "predictor"
STREAM = PredictionRequested.stream
# A compiled model predicts this many rows in well under a millisecond (0.18 ms for 32 rows of
# the bench's forest): less than handing the call to a worker thread costs in CPU and latency,
# so small batches are predicted on the event loop; bigger ones, and native models (9.5 ms
# for one row of the same forest), in a thread, so that the loop keeps reading.
INLINE_ROWS = 64
log = logging.getLogger(__name__)


def parse(message_id: str, fields: dict[bytes, bytes]) -> PredictionRequested | Refused:
    try:
        return PredictionRequested.model_validate_json(entry_body(fields))
    except (ValidationError, ValueError) as exc:
        return Refused.of(message_id, fields, STREAM, exc)


def answer(predictor: Predictor, requests: Sequence[PredictionRequested]) -> list[BatchPredicted]:
    """Answers for `requests` (all for one model): one predict call for all of them; when that
    fails, each request alone, so one bad batch does not fail its neighbours."""
    name, target = requests[0].model_name, requests[0].target
    columns = _columns(requests)
    try:
        merged = predictor.predict(name, None, columns, target)
    except NoModelInService as exc:
        return [_failure(r, "no_model", str(exc)) for r in requests]
    except Exception:
        if len(requests) == 1:
            return [_alone(predictor, requests[0])]
        return [_alone(predictor, r) for r in requests]
    return _split(merged, requests)


def _columns(requests: Sequence[PredictionRequested]) -> dict[str, list[Any]]:
    if len(requests) == 1:
        return dict(requests[0].columns)
    names = requests[0].columns.keys()
    return {n: [v for r in requests for v in r.columns.get(n, ())] for n in names}


def _frame(requests: Sequence[PredictionRequested]) -> pd.DataFrame:
    return pd.DataFrame(_columns(requests))


def _alone(predictor: Predictor, request: PredictionRequested) -> BatchPredicted:
    try:
        said = predictor.predict(request.model_name, _frame([request]), version=request.target)
        return _split(said, [request])[0]
    except NoModelInService as exc:
        return _failure(request, "no_model", str(exc))
    except (KeyError, ValueError, TypeError) as exc:
        return _failure(request, "invalid", f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        log.exception("predicting %s failed", request.model_name)
        return _failure(request, "failed", f"{type(exc).__name__}: {exc}")


def _split(merged: Prediction, requests: Sequence[PredictionRequested]) -> list[BatchPredicted]:
    classes = None if merged.classes is None else np.asarray(merged.classes).tolist()
    answers, start = [], 0
    for request in requests:
        stop = start + request.rows
        probabilities = merged.probabilities[start:stop] if merged.probabilities else None
        answers.append(
            BatchPredicted(
                request_id=request.event_id,
                model_name=merged.model_name,
                model_version=merged.model_version,
                predictions=merged.predictions[start:stop],
                probabilities=probabilities,
                classes=classes,
            )
        )
        start = stop
    return answers


def _failure(request: PredictionRequested, failure: Any, error: str) -> BatchPredicted:
    return BatchPredicted(
        request_id=request.event_id, model_name=request.model_name, failure=failure, error=error
    )


class OnlinePredictor:
    """Reads predict batches for this replica until cancelled."""

    def __init__(
        self,
        client: aioredis.Redis,
        predictor: Predictor,
        consumer: str,
        read_batches: int,
        *,
        clock: Callable[[], float] = time.time,
        metrics: PredictorMetrics | None = None,
        log: LogPolicy | None = None,
    ) -> None:
        self.client = client
        self.cluster = is_cluster(client)
        self.predictor = predictor
        self.consumer = consumer
        self.read_batches = read_batches
        self.clock = clock
        self.metrics = metrics or PredictorMetrics()
        self.log = log  # None: nothing goes to the prediction log
        # Per (model, champion, challenger): the paired scores, and when their PSI was set.
        self._windows: dict[tuple[str, str, str], shadow.ScoreWindow] = {}
        self._psi_at: dict[tuple[str, str, str], float] = {}

    async def run(self) -> None:
        await ensure_group(self.client, STREAM, GROUP)
        while True:
            try:
                await self.once(block_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis gone for a moment: keep trying; the heartbeat says whether we are up.
                log.exception("reading %s failed; retrying", STREAM)
                await asyncio.sleep(0.5)

    async def once(self, block_ms: int | None = None) -> int:
        """One read and its answers; how many batches were answered."""
        reply: Any = await self.client.xreadgroup(
            GROUP,
            self.consumer,
            {STREAM: ">"},
            count=self.read_batches,
            block=block_ms,
            noack=True,
        )
        entries = [(mid.decode(), fields) for _, items in reply or () for mid, fields in items]
        if not entries:
            return 0
        live, rejected = self._sort(entries)
        if rejected:
            await self._dead_letter(rejected)
        # One predict call per model and version: a canary's batches never mix with
        # production's (the gateway routes whole batches to one or the other).
        by_model: dict[tuple[str, int | None], list[PredictionRequested]] = defaultdict(list)
        for request in live:
            by_model[request.model_name, request.target].append(request)
        answered = 0
        for (name, target), requests in by_model.items():
            started = time.perf_counter()
            runtime = self.predictor.cache.runtime(name, target)
            if runtime == ONNX and sum(r.rows for r in requests) <= INLINE_ROWS:
                answers = answer(self.predictor, requests)
            else:
                answers = await anyio.to_thread.run_sync(answer, self.predictor, requests)
            seconds = time.perf_counter() - started
            self.metrics.predict_seconds.labels(name, runtime).observe(seconds)
            entry = functools.partial(self._entry, name, requests, answers, seconds)
            await self._reply(requests, answers, entry)
            self._count(name, requests, answers)
            await self._failed(name, target, requests, answers)
            answered += len(answers)
            if target is None:  # a challenger is compared with production, not a canary
                await self._shadow(name, requests, answers)
        return answered

    async def _shadow(
        self, name: str, requests: Sequence[PredictionRequested], answers: Sequence[BatchPredicted]
    ) -> None:
        """The challenger's answers to the sampled requests, once production's were sent:
        compared, counted and logged; a failure here never reaches a client."""
        held = self.predictor.cache.aside(CHALLENGER, name)
        if held is None:
            return
        sample = shadow.sample_of(requests, answers, held.share)
        if sample is None or sample.features is None:
            return
        challenger = held.served
        version = str(challenger.version)
        started = time.perf_counter()
        try:
            if challenger.runtime == ONNX and len(sample.predictions) <= INLINE_ROWS:
                said = self.predictor.predict_shadow(challenger, sample.features)
            else:
                said = await anyio.to_thread.run_sync(
                    self.predictor.predict_shadow, challenger, sample.features
                )
        except Exception:
            log.warning("challenger %s v%s failed to predict", name, version, exc_info=True)
            self.metrics.shadow_failures.labels(name, version).inc()
            return
        seconds = time.perf_counter() - started
        self.metrics.shadow_seconds.labels(name, version).observe(seconds)
        pair = (name, str(sample.model_version), version)
        compared = shadow.compare(sample.predictions, said.predictions)
        self.metrics.shadow_rows.labels(*pair).inc(compared.rows)
        self.metrics.shadow_agreeing.labels(*pair).inc(compared.agreeing)
        self.metrics.shadow_difference.labels(*pair).inc(compared.difference)
        self._score_shift(pair, sample, said)
        if self.log is None:
            return
        logged = shadow.shadow_entry(
            sample, said, challenger.lineage, replica=self.consumer, latency_ms=seconds * 1000
        )
        args, options = self._log_command(logged)
        await self.client.xadd(*args, **options)

    def _score_shift(
        self, pair: tuple[str, str, str], sample: PredictionsLogged, said: Prediction
    ) -> None:
        """Keep the pair's scores; the PSI between them, at most once a second (a few
        thousand values sorted: not for every batch)."""
        before = shadow.scores(sample.predictions, sample.probabilities)
        after = shadow.scores(said.predictions, said.probabilities)
        if before is None or after is None or len(before) != len(after):
            return
        if pair not in self._windows:  # a new challenger: the model's older pairs are done
            for old in [p for p in self._windows if p[0] == pair[0]]:
                del self._windows[old]
        window = self._windows.setdefault(pair, shadow.ScoreWindow())
        window.add(before, after)
        now = time.monotonic()
        if now - self._psi_at.get(pair, 0.0) >= 1.0:
            found = window.psi()
            if found is not None:  # too few scores yet: tried again at the next batch
                self._psi_at[pair] = now
                self.metrics.shadow_psi.labels(*pair).set(found)

    async def _failed(
        self,
        name: str,
        target: int | None,
        requests: Sequence[PredictionRequested],
        answers: Sequence[BatchPredicted],
    ) -> None:
        """Say which version failed which rows (the rollout guard's error rate); rare, so a
        call of its own. Rows refused as invalid are the client's fault, not the version's."""
        failed = [(r, a) for r, a in zip(requests, answers, strict=True) if a.failure == "failed"]
        if not failed:
            return
        try:
            version = self.predictor.cache.serving(name, target).version
        except NoModelInService:
            return
        event = PredictionsFailed(
            model_name=name,
            model_version=version,
            replica=self.consumer,
            rows=sum(r.rows for r, _ in failed),
            error=(failed[0][1].error or "")[:2000],
        )
        try:
            await self.client.xadd(event.stream, entry_fields(event), maxlen=10_000)  # type: ignore[arg-type]
        except Exception:
            log.warning("could not publish %s", event.stream, exc_info=True)

    def _count(
        self, name: str, requests: Sequence[PredictionRequested], answers: Sequence[BatchPredicted]
    ) -> None:
        for request, batch in zip(requests, answers, strict=True):
            self.metrics.batches.labels(name, batch.failure or "ok").inc()
            if batch.failure is None:
                self.metrics.rows.labels(name, "online").inc(request.rows)

    def _sort(
        self, entries: list[tuple[str, dict[bytes, bytes]]]
    ) -> tuple[list[PredictionRequested], list[Refused]]:
        now = self.clock()
        live: list[PredictionRequested] = []
        rejected: list[Refused] = []
        for message_id, fields in entries:
            parsed = parse(message_id, fields)
            if isinstance(parsed, Refused):
                rejected.append(parsed)
            elif parsed.deadline >= now:
                live.append(parsed)
            else:  # nobody waits for it any more: the gateway has answered 504 already
                log.debug("dropping expired predict batch %s", parsed.event_id)
                self.metrics.expired.inc()
        return live, rejected

    def _entry(
        self,
        name: str,
        requests: Sequence[PredictionRequested],
        answers: Sequence[BatchPredicted],
        seconds: float,
    ) -> PredictionsLogged | None:
        if self.log is None:
            return None
        version = next((a.model_version for a in answers if a.failure is None), None)
        return online_entry(
            requests,
            answers,
            self.predictor.cache.lineage(name, version),
            replica=self.consumer,
            latency_ms=seconds * 1000,
            sample=self.log.sample,
            features=self.log.keeps_features(name),
        )

    async def _reply(
        self,
        requests: Sequence[PredictionRequested],
        answers: Sequence[BatchPredicted],
        entry: Callable[[], PredictionsLogged | None] = lambda: None,
    ) -> None:
        """The answers, then the log entry (built only once the answers are on their way).

        A lone answer is published alone, and the entry follows in a second call: at low load
        the client's answer does not wait for the log. Several answers and the entry go in
        one pipeline: under load, one round trip instead of two.
        """
        replies = [
            (request.reply_to, batch.model_copy(update={"replica": self.consumer}))
            for request, batch in zip(requests, answers, strict=True)
        ]
        # One answer: a pipeline costs more than it saves. On a cluster the answers are
        # sharded Pub/Sub, to the master of each channel's slot (see gateway.coalesce), sent
        # together, each on its own.
        if self.cluster:
            await asyncio.gather(
                *(self.client.spublish(channel, s.model_dump_json()) for channel, s in replies)
            )
        elif len(replies) == 1:
            channel, stamped = replies[0]
            await self.client.publish(channel, stamped.model_dump_json())
        if self.cluster or len(replies) == 1:
            logged = entry()
            if logged is not None:
                args, options = self._log_command(logged)
                await self.client.xadd(*args, **options)
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for channel, stamped in replies:
                pipe.publish(channel, stamped.model_dump_json())
            logged = entry()
            if logged is not None:
                args, options = self._log_command(logged)
                pipe.xadd(*args, **options)
            await pipe.execute()

    def _log_command(self, entry: PredictionsLogged) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The XADD of a log entry, for the client or a pipeline."""
        assert self.log is not None
        return (entry.stream, entry_fields(entry)), {
            "maxlen": self.log.maxlen,
            "approximate": True,
        }

    async def _dead_letter(self, rejected: list[Refused]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for item in rejected:
                log.warning("dead-lettering %s %s: %s", STREAM, item.message_id, item.reason)
                dead_letter(pipe, STREAM, GROUP, item)
            await pipe.execute()
