"""At-least-once delivery for stream consumers: ack after the effect, dead-letter poison messages.

Every consumer runs each message through `Delivery.process`:

1. a message delivered more than `max_deliveries` times goes to `{<stream>}.dlq` with the last
   error, and is acked (in one MULTI, so it is never both lost and acked, nor dead-lettered twice);
2. a message that is not a valid event goes to the DLQ at once: retrying cannot fix it;
3. an event already handled (its id is in the done-log) is acked without doing anything;
4. otherwise the work runs while a lease keeper renews the message's idle time, so a long job is
   not mistaken for an abandoned one; the message is acked only after the work returns, which
   is after its effect is durable and its result published (and, with `redis_wait_replicas`,
   held by that many replicas: shared/replication.py);
5. a failure leaves the message pending: once its lease runs out, a consumer's reclaim
   subscriber (XAUTOCLAIM) delivers it again, and the delivery count grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from faststream import AckPolicy
from faststream.redis import RedisBroker, RedisStreamMessage, StreamSub
from pydantic import ValidationError

from shared.aio import every
from shared.errors import InvalidEvent, PermanentError, ReplicationLagging
from shared.events import Event, derived_event_id
from shared.keys import dead_letter_stream, done_key, errors_key
from shared.settings import CommonSettings
from shared.wire import DATA_FIELD, entry_body, text

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)


class Outcome(StrEnum):
    DONE = "done"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead-lettered"
    RETRY = "retry"


def parse_event(event_type: type[E], body: bytes, stream: str, message_id: str) -> E:
    """Validate a stream body as `event_type`; an absent `event_id` is derived from the entry id.

    Deriving it (rather than drawing a random one) means a redelivered entry keeps its id, so the
    done-log recognises it.
    """
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"body is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidEvent(f"body is JSON but not an object: {type(obj).__name__}")
    obj.setdefault("event_id", str(derived_event_id(stream, message_id)))
    try:
        return event_type.model_validate(obj)
    except ValidationError as exc:
        raise InvalidEvent(f"not a valid {event_type.__name__}: {_brief(exc)}") from exc


def _brief(exc: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(x) for x in err['loc']) or '<body>'}: {err['msg']}"
        for err in exc.errors(include_url=False)
    ]
    return "; ".join(parts[:10])


class Ledger(Protocol):
    """Where a consumer keeps its delivery bookkeeping (Redis in services, a fake in tests)."""

    async def delivery_count(self, message_id: str) -> int: ...

    async def is_done(self, event_id: uuid.UUID) -> bool: ...

    async def ack(self, message_id: str, done: uuid.UUID | None = None) -> None:
        """Acknowledge; with `done`, also remember that this event was handled."""

    async def dead_letter(self, message_id: str, letter: dict[str, Any]) -> None:
        """Append `letter` to the dead-letter stream and acknowledge, atomically."""

    async def record_error(self, message_id: str, error: str) -> None: ...

    async def last_error(self, message_id: str) -> str | None: ...

    async def renew(self, message_id: str) -> None:
        """Reset the message's idle time, so nobody reclaims it while it is being worked on."""


class Fence(Protocol):
    """Waits until replicas hold this process's writes (shared.replication; a fake in tests)."""

    async def settle(self) -> None:
        """Return once they do; raise ReplicationLagging when they do not in time."""


@dataclass(frozen=True)
class RedisLedger:
    """The Ledger on Redis: XPENDING for counts, XCLAIM JUSTID for leases, MULTI for acks."""

    client: aioredis.Redis
    stream: str
    group: str
    consumer: str
    done_ttl_s: int

    @property
    def _errors_key(self) -> str:
        return errors_key(self.stream, self.group)

    def _done_key(self, event_id: uuid.UUID) -> str:
        return done_key(self.stream, self.group, event_id)

    async def delivery_count(self, message_id: str) -> int:
        pending = await self.client.xpending_range(
            self.stream, self.group, min=message_id, max=message_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 1

    async def is_done(self, event_id: uuid.UUID) -> bool:
        return bool(await self.client.exists(self._done_key(event_id)))

    async def ack(self, message_id: str, done: uuid.UUID | None = None) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            if done is not None:
                pipe.set(self._done_key(done), message_id, ex=self.done_ttl_s)
            pipe.xack(self.stream, self.group, message_id)
            pipe.hdel(self._errors_key, message_id)
            await pipe.execute()

    async def dead_letter(self, message_id: str, letter: dict[str, Any]) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(dead_letter_stream(self.stream), {DATA_FIELD: json.dumps(letter)})
            pipe.xack(self.stream, self.group, message_id)
            pipe.hdel(self._errors_key, message_id)
            await pipe.execute()

    async def record_error(self, message_id: str, error: str) -> None:
        await self.client.hset(self._errors_key, message_id, error)

    async def last_error(self, message_id: str) -> str | None:
        value = await self.client.hget(self._errors_key, message_id)
        return None if value is None else text(value)

    async def renew(self, message_id: str) -> None:
        # JUSTID: does not count as a delivery.
        await self.client.xclaim(
            self.stream, self.group, self.consumer, 0, [message_id], justid=True
        )


@dataclass(frozen=True)
class Delivery:
    """Runs messages of one stream, for one consumer of one group, through the rules above."""

    ledger: Ledger
    stream: str
    group: str
    consumer: str
    settings: CommonSettings
    # With redis_wait_replicas set: replicas hold the work's writes before the ack.
    replication: Fence | None = None

    async def process(
        self,
        msg: RedisStreamMessage,
        event_type: type[E],
        work: Callable[[E], Awaitable[None]],
    ) -> Outcome:
        message_id = _message_id(msg)
        fields: dict[bytes, bytes] = msg.raw_message["data"]
        count = await self.ledger.delivery_count(message_id)
        if count > self.settings.max_deliveries:
            last = await self.ledger.last_error(message_id)
            reason = f"gave up after {count - 1} deliveries; last error: {last}"
            await self._dead_letter(message_id, fields, reason, count)
            return Outcome.DEAD_LETTERED
        try:
            event = parse_event(event_type, entry_body(fields), self.stream, message_id)
        except InvalidEvent as exc:
            await self._dead_letter(message_id, fields, str(exc), count)
            return Outcome.DEAD_LETTERED
        if await self.ledger.is_done(event.event_id):
            await self.ledger.ack(message_id)
            return Outcome.DUPLICATE
        try:
            async with self._lease(message_id):
                await self._work_until_replicated(event, work)
        except PermanentError as exc:
            await self._dead_letter(message_id, fields, f"{type(exc).__name__}: {exc}", count)
            return Outcome.DEAD_LETTERED
        except Exception as exc:
            log.exception("%s %s failed (delivery %d); will retry", self.stream, message_id, count)
            await self.ledger.record_error(message_id, f"{type(exc).__name__}: {exc}")
            return Outcome.RETRY
        await self.ledger.ack(message_id, done=event.event_id)
        return Outcome.DONE

    async def _work_until_replicated(self, event: E, work: Callable[[E], Awaitable[None]]) -> None:
        """The work, then (with a replication setting) the fence before the ack.

        When replicas do not confirm, the work runs again: its writes may have gone to a master
        that died before passing them on. It runs again here, under the lease, rather than by a
        redelivery, so that a failover does not use up the message's deliveries and send a
        good event to the dead letters. The work is idempotent, as for any redelivery.
        """
        pause = 0.2
        while True:
            await work(event)
            if self.replication is None:
                return
            try:
                await self.replication.settle()
                return
            except ReplicationLagging as exc:
                log.warning("%s %s: %s; doing it again", self.stream, event.event_id, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _dead_letter(
        self, message_id: str, fields: dict[bytes, bytes], reason: str, count: int
    ) -> None:
        log.warning("dead-lettering %s %s: %s", self.stream, message_id, reason)
        letter = {
            "stream": self.stream,
            "group": self.group,
            "message_id": message_id,
            "deliveries": count,
            "reason": reason,
            "failed_at": datetime.now(UTC).isoformat(),
            "payload": {text(k): text(v) for k, v in fields.items()},
        }
        await self.ledger.dead_letter(message_id, letter)

    def _lease(self, message_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Renew the message's lease every third of `lease_ms` while the work runs."""
        return every(
            self.settings.lease_ms / 3000,
            lambda: self.ledger.renew(message_id),
            f"renewing the lease of {message_id}",
        )


def _message_id(msg: RedisStreamMessage) -> str:
    ids = msg.raw_message.get("message_ids") or []
    # FastStream's in-memory test broker has no stream ids: its message id stands in.
    return text(ids[0]) if ids else msg.message_id


def subscribe(
    broker: RedisBroker,
    delivery: Delivery,
    event_type: type[E],
    work: Callable[[E], Awaitable[None]],
) -> None:
    """Register the two subscribers a consumer needs on `delivery.stream`.

    One reads new entries for the group; the other reclaims entries whose lease ran out (a
    crashed consumer's, or a failed attempt's). Both run the same rules.
    """
    settings = delivery.settings
    # One entry per read: a consumer busy with a long job holds only that job, and the others
    # take the rest (without COUNT, XREADGROUP hands one reader everything that is waiting).
    live = StreamSub(
        delivery.stream, group=delivery.group, consumer=delivery.consumer, max_records=1
    )
    reclaim = StreamSub(
        delivery.stream,
        group=delivery.group,
        consumer=delivery.consumer,
        min_idle_time=settings.lease_ms,
        polling_interval=settings.claim_interval_ms,
    )
    description = event_type.__doc__

    @broker.subscriber(stream=live, ack_policy=AckPolicy.MANUAL, description=description)
    async def on_new(msg: RedisStreamMessage) -> None:
        await delivery.process(msg, event_type, work)

    @broker.subscriber(stream=reclaim, ack_policy=AckPolicy.MANUAL, include_in_schema=False)
    async def on_reclaimed(msg: RedisStreamMessage) -> None:
        await delivery.process(msg, event_type, work)
