"""The ingestor's handlers on FastStream's in-memory broker: event in, event out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from faststream.redis import RedisBroker, TestRedisBroker

from ingestor.app import build_app
from ingestor.metrics import IngestorMetrics
from shared.events import DataArrived
from shared.settings import IngestorSettings
from tests.service.fakes import FakeLedger, FakeStatusBoard, NoPendingEntries, published

Make = Callable[..., IngestorSettings]


async def _run(
    settings: IngestorSettings, *messages: Any, metrics: IngestorMetrics | None = None
) -> tuple[FakeLedger, dict[str, list[Any]]]:
    ledger = FakeLedger()
    board = FakeStatusBoard()
    app = build_app(settings, ledger=ledger, board=board, metrics=metrics)
    broker = cast(RedisBroker, app.broker)
    seen = published(broker, "data-ingested", "data-rejected")

    async with TestRedisBroker(broker, pel=NoPendingEntries()) as test_broker:
        for message in messages:
            await test_broker.publish(message, stream="data-arrived")
    seen["progress"] = board.progress_reports
    return ledger, seen


@pytest.mark.anyio
async def test_data_arrived_yields_data_ingested_and_an_ack(make_settings: Make) -> None:
    ledger, seen = await _run(
        make_settings(), DataArrived(dataset="churn", source="churn/churn.csv")
    )
    (event,) = seen["data-ingested"]
    assert (event["dataset"], event["version"], event["rows"]) == ("churn", 1, 4992)
    assert ledger.acked
    assert not ledger.letters
    # The last progress report is the whole file.
    flow, done, total = seen["progress"][-1]
    assert flow == event["correlation_id"]
    assert done == total


@pytest.mark.anyio
async def test_a_missing_file_yields_data_rejected(make_settings: Make) -> None:
    _, seen = await _run(make_settings(), DataArrived(dataset="churn", source="churn/nope.csv"))
    (event,) = seen["data-rejected"]
    assert event["kind"] == "source_error"
    assert "no such file" in event["reason"]


@pytest.mark.anyio
async def test_the_outcomes_are_counted(make_settings: Make) -> None:
    metrics = IngestorMetrics()
    sample = DataArrived(dataset="churn", source="churn/churn.csv")
    _, seen = await _run(
        make_settings(),
        sample,
        DataArrived(dataset="churn", source="churn/churn.csv"),  # same content: unchanged
        DataArrived(dataset="churn", source="churn/nope.csv"),
        metrics=metrics,
    )
    value = metrics.registry.get_sample_value
    rows = "streamops_ingested_rows_total"
    assert value(rows, {"dataset": "churn", "outcome": "accepted"}) == 4992
    assert value(rows, {"dataset": "churn", "outcome": "quarantined"}) == 8
    batches = "streamops_ingest_batches_total"
    assert value(batches, {"dataset": "churn", "outcome": "new_version", "kind": ""}) == 1
    assert value(batches, {"dataset": "churn", "outcome": "unchanged", "kind": ""}) == 1
    rejected = {"dataset": "churn", "outcome": "rejected", "kind": "source_error"}
    assert value(batches, rejected) == 1
    assert value("streamops_ingest_seconds_count", {"dataset": "churn"}) == 3
    (stored,) = seen["data-ingested"][:1]
    files = [f for f in Path(stored["path"]).rglob("*") if f.is_file()]
    assert files
    written = sum(f.stat().st_size for f in files)
    assert value("streamops_ingested_bytes_total", {"dataset": "churn"}) == written


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("message", "words"),
    [
        (b"not json at all", "not JSON"),
        (json.dumps({"dataset": "churn"}), "source: Field required"),
        (json.dumps({"dataset": "nope", "source": "x.csv"}), "no dataset spec for 'nope'"),
    ],
)
async def test_poison_messages_are_dead_lettered_with_the_reason(
    make_settings: Make, message: Any, words: str
) -> None:
    ledger, seen = await _run(make_settings(), message)
    (letter,) = ledger.letters
    assert words in letter["reason"]
    assert letter["stream"] == "data-arrived"
    assert seen["data-ingested"] == seen["data-rejected"] == []
