"""A bounded schemathesis run over the gateway's OpenAPI document, with a real Redis and a
predictor replica: no 5xx, and no status code that the document does not declare.

It runs without an API key, with one configured and not sent (every mutating operation must
declare its 401), and with one configured and sent. The gateway runs where schemathesis runs
ASGI apps (its own event loop thread, lifespan included); the replica runs in a portal of its
own. Each operation gets a few generated cases in each mode: hypothesis is derandomized, so a
failure found here is found again on the next run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from anyio.from_thread import start_blocking_portal
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import build_app
from predictor.app import build_app as build_predictor
from predictor.cache import ModelCache
from shared.settings import CommonSettings, GatewaySettings, PredictorSettings
from tests.support.shelf import ModelShelf
from tests.support.streams import running

pytestmark = [pytest.mark.integration]
KEY = "s3cret"
EXAMPLES = 25  # per operation and mode: at most about 1,300 calls in all, some 20 s
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
]
# Path parameters that exist, so the cases reach past the 404s as well.
KNOWN = {"model_name": "churn", "dataset": "churn"}


@pytest.fixture
def replica(common: CommonSettings, shelf: ModelShelf) -> Iterator[None]:
    settings = PredictorSettings(common=common, converge_s=3600)
    app = build_predictor(settings, cache=ModelCache(), registry=shelf)
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(running(app)):
        yield


@contextlib.contextmanager
def gateway_schema(settings: GatewaySettings, shelf: ModelShelf) -> Iterator[Any]:
    app = build_app(settings, registry=shelf)
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        shutdown_lifespans()  # the gateway's lifespan: its coalescer, fleet and Redis client


def fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str], **fixed: Any) -> None:
    strategy = operation.as_strategy(generation_mode=mode, **fixed)

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()


def has_body(operation: Any) -> bool:
    return len(operation.body) > 0


@pytest.mark.parametrize(
    ("configured", "sent"),
    [(None, None), (KEY, None), (KEY, KEY)],
    ids=["no-key", "key-configured-not-sent", "key-sent"],
)
def test_every_answer_is_declared_and_none_is_a_server_error(
    common: CommonSettings,
    shelf: ModelShelf,
    replica: None,
    tmp_path: Path,
    configured: str | None,
    sent: str | None,
) -> None:
    settings = GatewaySettings(common=common, inbox=tmp_path / "inbox", api_key=configured)
    headers = {"X-API-Key": sent} if sent else {}
    with gateway_schema(settings, shelf) as schema:
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 9, [o.label for o in operations]
        for operation in operations:
            known = {
                name: KNOWN[name]
                for name in (p.name for p in operation.path_parameters)
                if name in KNOWN
            }
            fuzz(operation, GenerationMode.POSITIVE, headers)
            # Only bodies can be wrong: every parameter (path, header) is a free string.
            if has_body(operation):
                fuzz(operation, GenerationMode.NEGATIVE, headers)
            if known:
                fuzz(operation, GenerationMode.POSITIVE, headers, path_parameters=known)
