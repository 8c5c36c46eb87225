"""The wire format: plain JSON that any Redis client can write and read."""

from __future__ import annotations

import asyncio
import json

from faststream.redis.parser import BinaryMessageFormatV1

from shared.delivery import parse_event
from shared.events import DataArrived
from shared.wire import JsonMessageFormat, encode_event, entry_body, entry_fields, text


def test_an_event_is_one_field_holding_its_json() -> None:
    event = DataArrived(dataset="churn", source="x.csv")
    fields = entry_fields(event)
    assert list(fields) == ["__data__"]
    assert json.loads(fields["__data__"])["dataset"] == "churn"


def test_faststream_publishes_the_same_bytes() -> None:
    event = DataArrived(dataset="churn", source="x.csv")
    encoded = asyncio.run(
        JsonMessageFormat.encode(message=event, reply_to=None, headers=None, correlation_id="c")
    )
    assert encoded == encode_event(event)
    body, headers = JsonMessageFormat.parse(encoded)
    assert body == encoded
    assert headers["correlation_id"] == event.correlation_id


def test_non_json_is_passed_on_untouched_for_the_consumer_to_refuse() -> None:
    assert JsonMessageFormat.parse(b"\xff not json") == (b"\xff not json", {})


def test_entries_in_faststream_binary_framing_are_still_read() -> None:
    framed = asyncio.run(
        BinaryMessageFormatV1.encode(
            message={"dataset": "churn"}, reply_to=None, headers=None, correlation_id="c"
        )
    )
    body, _ = JsonMessageFormat.parse(framed)
    assert json.loads(body) == {"dataset": "churn"}


def test_flat_entries_become_an_object_of_their_fields() -> None:
    body = entry_body({b"dataset": b"churn", b"source": b"/data/x.csv"})
    event = parse_event(DataArrived, body, "data-arrived", "1-0")
    assert (event.dataset, event.source.kind) == ("churn", "csv")


def test_an_event_without_an_id_gets_one_derived_from_its_entry() -> None:
    body = json.dumps({"dataset": "churn", "source": "x.csv"}).encode()
    first = parse_event(DataArrived, body, "data-arrived", "5-0")
    again = parse_event(DataArrived, body, "data-arrived", "5-0")
    other = parse_event(DataArrived, body, "data-arrived", "6-0")
    assert first.event_id == again.event_id != other.event_id


def test_text_reads_any_redis_reply_as_a_string() -> None:
    assert text(b"1700000000000-0") == "1700000000000-0"
    assert text("already text") == "already text"
    assert text(3) == "3"
    assert text(None) == ""
    # A stray byte is replaced, never raised: a consumer must not fail on a bad field.
    assert text(b"caf\xe9") == "caf\ufffd"
