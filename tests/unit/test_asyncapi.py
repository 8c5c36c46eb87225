"""The ingestor's AsyncAPI document names its streams and explains its payloads."""

from __future__ import annotations

import json

import pytest

from ingestor.app import build_app
from shared.settings import CommonSettings, IngestorSettings


def test_the_asyncapi_document_describes_what_the_ingestor_publishes() -> None:
    app = build_app(IngestorSettings(common=CommonSettings()))
    assert app.schema is not None
    document = json.loads(app.schema.to_specification().to_json())
    text = json.dumps(document)
    for stream in ("data-arrived", "data-ingested", "data-rejected"):
        assert stream in text
    assert "Rows accepted into the version." in text


def test_every_service_prints_its_asyncapi_document(capsys: pytest.CaptureFixture[str]) -> None:
    from streamops.cli import main

    expected = {
        "ingestor": "data-ingested",
        "trainer": "model-trained",
        "predictor": "model-promoted",
    }
    for service, stream in expected.items():
        assert main(["asyncapi", service]) == 0
        document = json.loads(capsys.readouterr().out)
        assert stream in json.dumps(document)
        if service == "predictor":  # the prediction log's entries, explained
            assert "Time the replica took to predict the batch." in json.dumps(document)
