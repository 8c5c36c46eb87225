"""Coalescing: concurrent predict requests for one model become one batch on the stream.

A forest predicts 100 rows in about the time it takes for one, and a round trip over Redis
costs the same for one row as for a hundred, so a gateway process gathers the requests that
arrive together. A batch leaves when it holds `batch_rows` rows, when `batch_wait_ms` have
passed since its first request, or at once when no batch of that model is in flight: a lone
request never waits for company it will not get, and under load the wait fills batches while
the previous ones are being predicted.

Answers come back on one Pub/Sub channel per gateway process, matched by the batch's event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError

from shared.broker import is_cluster, node_client
from shared.errors import (
    InvalidRows,
    NoModelInService,
    NoPredictor,
    PredictionFailed,
    PredictorTimeout,
)
from shared.events import BatchPredicted, PredictionRequested
from shared.settings import GatewaySettings
from shared.wire import entry_fields

log = logging.getLogger(__name__)
# Predict entries are read without acks and are worthless after their deadline: the stream
# only needs to hold what is waiting, so it is trimmed (approximately, which is cheap).
STREAM_MAXLEN = 10_000


@dataclass(frozen=True)
class Answer:
    """The rows of one request, cut out of its batch's answer."""

    batch: BatchPredicted
    start: int
    stop: int

    @property
    def predictions(self) -> list[Any]:
        return self.batch.predictions[self.start : self.stop]

    @property
    def probabilities(self) -> list[list[float]] | None:
        probabilities = self.batch.probabilities
        return None if probabilities is None else probabilities[self.start : self.stop]


@dataclass
class _Part:
    values: Sequence[tuple[Any, ...]]  # each row's values, in the order of its batch's columns
    future: asyncio.Future[Answer]
    request_id: str  # the HTTP request's (X-Request-Id): the prediction log is keyed by it


@dataclass
class _Batch:
    columns: tuple[str, ...]
    parts: list[_Part] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True)
class _Sent:
    model_name: str
    parts: tuple[tuple[asyncio.Future[Answer], int, int], ...]


class Coalescer:
    """One per gateway process."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: GatewaySettings,
        clock: Callable[[], float] = time.time,
        answered: Callable[[BatchPredicted], None] = lambda batch: None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock
        self.answered = answered  # told of every batch answered in time (the metrics)
        # Several gunicorn workers may share a consumer name (settings read before the fork).
        self.channel = f"streamops:replies:{settings.common.consumer_name}:{uuid.uuid4().hex[:12]}"
        # Open batches by model and target version (None: production; a canary's version):
        # a batch is answered by one version.
        self._open: dict[tuple[str, int | None], _Batch] = {}
        self._in_flight: dict[str, int] = defaultdict(int)
        self._sent: dict[uuid.UUID, _Sent] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._node: aioredis.Redis | None = None  # on a cluster: the node subscribed to
        self._subscriptions = 0

    async def start(self) -> None:
        await self._subscribe()
        self._listener = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._unsubscribe()

    async def predict(
        self,
        model_name: str,
        columns: tuple[str, ...],
        rows: Sequence[tuple[Any, ...]],
        request_id: str,
        target: int | None = None,
    ) -> Answer:
        """The predictions for `rows` (each a tuple of values in `columns` order) of request
        `request_id`, by the version `target` (a canary's) or production; raises
        PredictorTimeout, NoModelInService, InvalidRows, PredictionFailed or NoPredictor."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._add((model_name, target), columns, _Part(rows, future, request_id))
        # The timeout is the batch's (`_expire`): one timer per batch, not one per request.
        return await future

    def _add(self, key: tuple[str, int | None], columns: tuple[str, ...], part: _Part) -> None:
        model_name = key[0]
        batch = self._open.get(key)
        rows = len(part.values)
        # Other columns: the model's route changed between two requests; they go apart.
        if batch is not None and (
            batch.rows + rows > self.settings.batch_rows or batch.columns != columns
        ):
            self._flush(key)
            batch = None
        if batch is None:
            batch = self._open[key] = _Batch(columns)
            # call_later(0) still runs after the requests already parsed in this loop turn.
            wait = self.settings.batch_wait_ms / 1000 if self._in_flight[model_name] else 0.0
            batch.timer = asyncio.get_running_loop().call_later(wait, self._flush, key)
        batch.parts.append(part)
        batch.rows += rows
        if batch.rows >= self.settings.batch_rows:
            self._flush(key)

    def _flush(self, key: tuple[str, int | None]) -> None:
        model_name, target = key
        batch = self._open.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        parts = [p for p in batch.parts if not p.future.done()]  # cancelled: client gone
        if not parts:
            return
        request = PredictionRequested(
            model_name=model_name,
            reply_to=self.channel,
            deadline=self.clock() + self.settings.predict_timeout_s,
            columns=_by_column(batch.columns, parts),
            requests=[(p.request_id, len(p.values)) for p in parts],
            target=target,
        )
        offsets, start = [], 0
        for part in parts:
            offsets.append((part.future, start, start + len(part.values)))
            start += len(part.values)
        self._sent[request.event_id] = _Sent(model_name, tuple(offsets))
        self._in_flight[model_name] += 1
        # Counted from the batch's departure: its requests arrived at most batch_wait_ms before.
        loop = asyncio.get_running_loop()
        loop.call_later(self.settings.predict_timeout_s, self._expire, request.event_id)
        task = asyncio.create_task(self._send(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, request: PredictionRequested) -> None:
        try:
            await self.client.xadd(
                request.stream,
                entry_fields(request),  # type: ignore[arg-type]
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
        except Exception as exc:
            sent = self._forget(request.event_id)
            error = NoPredictor(f"cannot reach Redis to ask a predictor: {exc}")
            for future, _, _ in sent.parts if sent else ():
                if not future.done():
                    future.set_exception(error)

    def _expire(self, request_id: uuid.UUID) -> None:
        sent = self._forget(request_id)
        if sent is None:
            return  # answered in time
        said = (
            f"no predictor answered for {sent.model_name!r} within "
            f"{self.settings.predict_timeout_s:g} s"
        )
        for future, _, _ in sent.parts:
            if not future.done():
                future.set_exception(PredictorTimeout(said))

    def _forget(self, request_id: uuid.UUID) -> _Sent | None:
        sent = self._sent.pop(request_id, None)
        if sent is not None:
            self._in_flight[sent.model_name] -= 1
        return sent

    async def _listen(self) -> None:
        while True:
            try:
                async for message in self._pubsub.listen():
                    self._on_reply(message["data"])
                # listen() ends at once when nothing is subscribed (a resubscription that
                # failed): going round again without a pause would hold the event loop.
                raise ConnectionError(f"not subscribed to {self.channel}")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reply channel %s failed; resubscribing", self.channel)
                await asyncio.sleep(0.2)
                await self._unsubscribe()
                with contextlib.suppress(Exception):
                    await self._subscribe()

    async def _subscribe(self) -> None:
        """Subscribe to the reply channel.

        On a cluster the replies are sharded Pub/Sub (SPUBLISH, Redis 7): they go to the
        master of the channel's slot only, where a plain PUBLISH would be copied to every node
        of the cluster. The subscription is a plain connection to that master; after a failure
        (a failover) the cluster's map is read again and the slot's new master subscribed to.
        """
        self._subscriptions += 1
        if not is_cluster(self.client):
            self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            await self._pubsub.subscribe(self.channel)
            return
        cluster: Any = self.client
        await cluster.initialize()  # a new client knows no node before its first command
        if self._subscriptions > 1:
            with contextlib.suppress(Exception):
                await cluster.nodes_manager.initialize()
        self._node = node_client(cluster.get_node_from_key(self.channel))
        self._pubsub = self._node.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.ssubscribe(self.channel)

    async def _unsubscribe(self) -> None:
        with contextlib.suppress(Exception):
            if self._pubsub is not None:
                await self._pubsub.aclose()
            if self._node is not None:
                await self._node.aclose()
        self._node = None

    def _on_reply(self, data: bytes) -> None:
        try:
            batch = BatchPredicted.model_validate_json(data)
        except ValidationError as exc:
            log.warning("ignoring a malformed answer on %s: %s", self.channel, exc)
            return
        sent = self._forget(batch.request_id)
        if sent is None:
            return  # answered after its deadline: the requests have had their 504
        self.answered(batch)
        for future, start, stop in sent.parts:
            if future.done():
                continue
            if batch.failure is None:
                future.set_result(Answer(batch, start, stop))
            else:
                future.set_exception(_failure(batch))


def _failure(batch: BatchPredicted) -> Exception:
    if batch.failure == "no_model":
        return NoModelInService(batch.error or f"no version of {batch.model_name} in service")
    if batch.failure == "invalid":
        return InvalidRows(batch.error or "the model cannot predict these rows")
    return PredictionFailed(batch.error or f"the predictor failed to predict {batch.model_name}")


def _by_column(columns: tuple[str, ...], parts: list[_Part]) -> dict[str, list[Any]]:
    """The rows of every part, column by column (transposed in C, once per batch)."""
    rows = parts[0].values if len(parts) == 1 else [r for part in parts for r in part.values]
    return {
        name: list(values) for name, values in zip(columns, zip(*rows, strict=True), strict=True)
    }
