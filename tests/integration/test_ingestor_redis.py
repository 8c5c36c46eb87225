"""The ingestor against a real Redis, driven by a plain redis-py client as any producer would."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from ingestor.app import build_app
from shared.feature_store import FeatureStore
from shared.keys import progress_key
from shared.settings import BUNDLED_DATASETS, IngestorSettings
from tests.support.data import churn_rows, write_csv
from tests.support.streams import entries, pending, running, wait_for_entries
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
Make = Callable[..., IngestorSettings]


def _arrived(uri: str, **extra: object) -> Any:
    body = {"dataset": "churn", "source": {"kind": "csv", "uri": uri}, **extra}
    return {"__data__": json.dumps(body).encode()}


async def test_a_raw_xadd_yields_a_version_a_quarantine_and_a_readable_event(
    make_settings: Make, redis_db: str, client: aioredis.Redis
) -> None:
    settings = make_settings(redis_db)
    async with running(build_app(settings)):
        await client.xadd("data-arrived", _arrived("churn/churn.csv"))
        (event,) = await wait_for_entries(client, "data-ingested")
        assert (event["dataset"], event["version"], event["rows"]) == ("churn", 1, 4992)
        assert event["quarantined_rows"] == 8
        assert event["new_version"] is True
        await eventually(lambda: _none_pending(client), what="the event acked")
    store = FeatureStore(settings.common.feature_store_root)
    # The last progress report says the whole file was read (what `streamops ingest` shows).
    size = (BUNDLED_DATASETS / "churn" / "churn.csv").stat().st_size
    report = await client.hgetall(progress_key(event["correlation_id"]))
    assert (int(report[b"done"]), int(report[b"total"])) == (size, size)
    assert store.quarantine("churn", 1).num_rows == 8


async def _none_pending(client: aioredis.Redis) -> bool:
    return await pending(client, "data-arrived", "ingestor") == 0


async def test_sending_the_same_data_again_makes_no_new_version(
    make_settings: Make, redis_db: str, client: aioredis.Redis
) -> None:
    settings = make_settings(redis_db)
    async with running(build_app(settings)):
        await client.xadd("data-arrived", _arrived("churn/churn.csv"))
        await wait_for_entries(client, "data-ingested")
        # The flat form: fields instead of a JSON body.
        flat: Any = {"dataset": "churn", "source": "churn/churn.csv"}
        await client.xadd("data-arrived", flat)
        first, again = await wait_for_entries(client, "data-ingested", 2)
    assert again["new_version"] is False
    assert (again["version"], again["event_id"]) == (first["version"], first["event_id"])
    assert len(FeatureStore(settings.common.feature_store_root).versions("churn")) == 1


async def test_the_same_event_delivered_twice_is_handled_once(
    make_settings: Make, redis_db: str, client: aioredis.Redis
) -> None:
    message = _arrived("churn/churn.csv", event_id="0b8e2a52-4c1e-4a8e-9d61-5e0a2f7c9b11")
    async with running(build_app(make_settings(redis_db))):
        await client.xadd("data-arrived", message)
        await wait_for_entries(client, "data-ingested")
        await client.xadd("data-arrived", message)
        await eventually(lambda: _none_pending(client), what="both acked")
        assert await client.xlen("data-arrived") == 2
    assert len(await entries(client, "data-ingested")) == 1


async def test_a_missing_column_yields_data_rejected_and_no_version(
    make_settings: Make, redis_db: str, client: aioredis.Redis, inbox: Path
) -> None:
    settings = make_settings(redis_db)
    rows = [{k: v for k, v in r.items() if k != "plan"} for r in churn_rows(10)]
    write_csv(inbox / "no-plan.csv", rows)
    async with running(build_app(settings)):
        await client.xadd("data-arrived", _arrived(str(inbox / "no-plan.csv")))
        (event,) = await wait_for_entries(client, "data-rejected")
    assert event["kind"] == "schema_drift"
    assert "missing column 'plan'" in event["details"]
    assert FeatureStore(settings.common.feature_store_root).versions("churn") == []


async def test_poison_messages_go_to_the_dead_letter_stream_and_work_goes_on(
    make_settings: Make, redis_db: str, client: aioredis.Redis
) -> None:
    async with running(build_app(make_settings(redis_db))):
        for body in (
            b"{not json",
            json.dumps({"dataset": "churn"}).encode(),
            json.dumps({"dataset": "ghost", "source": "x.csv"}).encode(),
        ):
            fields: Any = {"__data__": body}
            await client.xadd("data-arrived", fields)
        await client.xadd("data-arrived", _arrived("churn/churn.csv"))
        letters = await wait_for_entries(client, "{data-arrived}.dlq", 3)
        await wait_for_entries(client, "data-ingested")
    reasons = [letter["reason"] for letter in letters]
    assert "body is not JSON" in reasons[0]
    assert "source: Field required" in reasons[1]
    assert "no dataset spec for 'ghost'" in reasons[2]
    assert letters[0]["payload"] == {"__data__": "{not json"}
    assert all(letter["stream"] == "data-arrived" for letter in letters)


async def test_a_source_that_keeps_failing_is_retried_then_dead_lettered(
    make_settings: Make, redis_db: str, client: aioredis.Redis
) -> None:
    # Nothing listens on port 9: connection refused, a transient error, every time.
    settings = make_settings(
        redis_db, max_deliveries=3, lease_ms=300, rest_allow_hosts=["127.0.0.1:9"]
    )
    body = {"dataset": "churn", "source": {"kind": "rest", "url": "http://127.0.0.1:9/rows"}}
    async with running(build_app(settings)):
        poison: Any = {"__data__": json.dumps(body).encode()}
        await client.xadd("data-arrived", poison)
        (letter,) = await wait_for_entries(client, "{data-arrived}.dlq", timeout=30)
    assert letter["reason"].startswith("gave up after 3 deliveries; last error: SourceUnavailable")
    assert letter["deliveries"] == 4
    assert await pending(client, "data-arrived", "ingestor") == 0
