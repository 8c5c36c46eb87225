"""Event contracts: envelope defaults, frozen models, described fields, one stream each."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel, ValidationError

from shared.events import (
    ALL_EVENTS,
    STREAMS,
    CsvSource,
    DataArrived,
    DataIngested,
    PredictionRequested,
    PredictionsLogged,
    ScoreRequested,
    derived_event_id,
)
from shared.keys import dead_letter_stream


def test_the_envelope_fills_itself_in() -> None:
    event = DataArrived(dataset="churn", source={"kind": "csv", "uri": "churn/churn.csv"})
    assert isinstance(event.event_id, uuid.UUID)
    assert event.schema_version == 1
    assert event.occurred_at.tzinfo is not None
    assert event.correlation_id == str(event.event_id)


def test_a_given_correlation_id_is_kept_and_events_are_frozen() -> None:
    event = DataArrived(dataset="churn", source="x.csv", correlation_id="flow-1")
    assert event.correlation_id == "flow-1"
    with pytest.raises(ValidationError):
        event.dataset = "other"  # type: ignore[misc]


def test_a_bare_path_or_json_text_is_accepted_as_the_source() -> None:
    assert DataArrived(dataset="churn", source="/data/x.csv").source == CsvSource(uri="/data/x.csv")
    sql = DataArrived(
        dataset="churn", source='{"kind": "sql", "url": "sqlite://", "query": "select 1"}'
    )
    assert sql.source.kind == "sql"


@pytest.mark.parametrize(
    "payload",
    [
        {"source": "x.csv"},
        {"dataset": "Bad Name!", "source": "x.csv"},
        {"dataset": "churn", "source": {"kind": "ftp", "uri": "x"}},
        {"dataset": "churn", "source": "x.csv", "surprise": 1},
        {"dataset": "churn", "source": "x.csv", "schema_version": 2},
    ],
)
def test_malformed_events_are_refused(payload: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DataArrived.model_validate(payload)


def test_score_requests_need_exactly_one_input() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        ScoreRequested(job_id="j", model_name="m")
    ScoreRequested(job_id="j", model_name="m", rows=({"a": 1},))


def test_every_event_has_its_own_stream_and_a_dead_letter_stream() -> None:
    assert set(STREAMS) == {
        "data-arrived",
        "data-ingested",
        "data-rejected",
        "model-trained",
        "model-promoted",
        "model-loads",
        "predict-requests",
        "predictions",
        "labels-arrived",
        "retrain-requested",
        "score-requested",
        "scored",
        "score-chunks",
        "score-rejected",
    }
    assert dead_letter_stream("data-arrived") == "{data-arrived}.dlq"


def test_a_batch_s_request_spans_must_cover_its_rows() -> None:
    fields = {"model_name": "m", "reply_to": "c", "deadline": 1.0, "columns": {"a": [1, 2]}}
    assert PredictionRequested(**fields, requests=[("r1", 1), ("r2", 1)]).rows == 2
    with pytest.raises(ValidationError, match="add up"):
        PredictionRequested(**fields, requests=[("r1", 1)])
    logged = {"model_name": "m", "model_version": 1, "latency_ms": 1.0, "features": None}
    with pytest.raises(ValidationError, match="add up"):
        PredictionsLogged(**logged, requests=[("r1", 2)], predictions=[1])
    with pytest.raises(ValidationError, match="differ in length"):
        PredictionsLogged(
            **logged | {"features": {"a": [1]}}, requests=[("r", 2)], predictions=[1, 2]
        )


def _undescribed(model: type[BaseModel], prefix: str = "") -> list[str]:
    envelope = {"event_id", "schema_version", "occurred_at", "correlation_id"}
    missing = []
    schema = model.model_json_schema()
    for name, prop in schema["properties"].items():
        if name in ("kind", "type") or name in envelope:
            continue
        if "description" not in prop:
            missing.append(f"{prefix}{model.__name__}.{name}")
    return missing


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.__name__)
def test_every_field_is_described_for_the_asyncapi_document(event: type[BaseModel]) -> None:
    assert event.__doc__
    assert _undescribed(event) == []


def test_derived_ids_are_stable_and_distinct() -> None:
    assert derived_event_id("data-ingested", "churn", 1) == derived_event_id(
        "data-ingested", "churn", 1
    )
    assert derived_event_id("data-ingested", "churn", 1) != derived_event_id(
        "data-ingested", "churn", 2
    )
    event = DataIngested(
        event_id=derived_event_id("x"),
        dataset="churn",
        version=1,
        content_hash="h",
        rows=1,
        quarantined_rows=0,
        path="/p",
        new_version=True,
        source="s",
    )
    assert event.correlation_id == str(event.event_id)
