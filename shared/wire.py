"""The wire format: one stream entry per event, its body a plain JSON object.

FastStream 0.7 frames messages in its own binary format by default, which no other Redis client
can read. streamops replaces it with `JsonMessageFormat`: the entry's `__data__` field holds the
event as UTF-8 JSON, nothing else. So `redis-cli XADD ... __data__ '{...}'` produces an event and
`XRANGE` shows one. Entries without `__data__` (e.g. `XADD s * dataset churn source /x.csv`) are
read by FastStream as a JSON object of their fields, which the event models also accept.
See docs/wire-format.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from faststream.redis.parser import BinaryMessageFormatV1, MessageFormat

from shared.events import Event

if TYPE_CHECKING:
    from fast_depends.library.serializer import SerializerProto
    from faststream._internal.basic_types import SendableMessage
    from faststream._internal.parser import CodecProto

DATA_FIELD = "__data__"
JSON_CONTENT_TYPE = "application/json"


def encode_event(event: Event) -> bytes:
    """The bytes stored in an entry's `__data__` field for `event`."""
    return event.model_dump_json().encode()


def entry_fields(event: Event) -> dict[str, bytes]:
    """The fields of the stream entry that carries `event` (for plain redis-py producers)."""
    return {DATA_FIELD: encode_event(event)}


def entry_body(fields: Mapping[bytes, bytes] | Mapping[str, str]) -> bytes:
    """The JSON body of a raw stream entry, whichever of the two accepted shapes it has."""
    normalised: dict[str, bytes | str] = {text(k): v for k, v in fields.items()}
    data = normalised.get(DATA_FIELD)
    if data is not None:
        return data if isinstance(data, bytes) else data.encode()
    return json.dumps({k: text(v) for k, v in normalised.items()}).encode()


def text(value: object) -> str:
    """A Redis reply as text: bytes decoded as UTF-8 (undecodable bytes replaced, so a stray
    byte cannot fail a consumer), None as "", anything else as str()."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)


class JsonMessageFormat(MessageFormat):
    """FastStream message format whose payload is the JSON body itself, without framing.

    FastStream headers (reply_to, custom headers) are not carried: the event envelope holds the
    correlation id, and request/reply does not travel over these streams.
    """

    __slots__ = ()

    @classmethod
    async def encode(
        cls,
        *,
        message: Sequence[SendableMessage] | SendableMessage,
        reply_to: str | None,
        headers: dict[str, Any] | None,
        correlation_id: str,
        serializer: SerializerProto | None = None,
        codec: CodecProto | None = None,
    ) -> bytes:
        if isinstance(message, Event):
            return encode_event(message)
        built = await cls.build(
            message=message,
            reply_to=reply_to,
            headers=headers,
            correlation_id=correlation_id,
            serializer=serializer,
            codec=codec,
        )
        return built.data

    @classmethod
    def parse(cls, data: bytes) -> tuple[bytes, dict[str, Any]]:
        if data.startswith(BinaryMessageFormatV1.IDENTITY_HEADER):
            # Published by a FastStream client with the default format: still readable.
            return BinaryMessageFormatV1.parse(data)
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return data, {}
        headers: dict[str, Any] = {"content-type": JSON_CONTENT_TYPE}
        if isinstance(obj, dict) and isinstance(obj.get("correlation_id"), str):
            headers["correlation_id"] = obj["correlation_id"]
        return data, headers


# --- entries that are not the stream's event ------------------------------------------------------


class Refused:
    """A stream entry that is not the event its stream carries, on its way to the stream's
    dead-letter stream (`{S}.dlq`), with the reason and the entry's fields as text."""

    __slots__ = ("message_id", "payload", "reason")

    def __init__(self, message_id: str, reason: str, payload: dict[str, str]) -> None:
        self.message_id = message_id
        self.reason = reason
        self.payload = payload

    @classmethod
    def of(
        cls, message_id: str, fields: Mapping[bytes, bytes], stream: str, exc: Exception
    ) -> Refused:
        payload = {
            k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()
        }
        return cls(message_id, f"not a valid {stream} entry: {exc}", payload)


def dead_letter(pipe: Any, stream: str, group: str, refused: Refused) -> None:
    """Queue on `pipe` (a redis-py pipeline) the XADD that dead-letters `refused`."""
    from shared.keys import dead_letter_stream

    letter = {
        "stream": stream,
        "group": group,
        "message_id": refused.message_id,
        "reason": refused.reason,
        "payload": refused.payload,
    }
    pipe.xadd(dead_letter_stream(stream), {DATA_FIELD: json.dumps(letter)})
