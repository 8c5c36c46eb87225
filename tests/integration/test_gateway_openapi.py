"""A bounded schemathesis run over the gateway's OpenAPI document, with a real Redis and a
predictor replica: no 5xx, and no status code that the document does not declare.

It runs without an API key, with one configured and not sent (every mutating operation must
declare its 401), and with one configured and sent. The replica serves two models: churn, from
its dataset spec, and one registered with no spec, from its MLflow signature, whose answers are
objects (a frame of two columns), so both kinds of predict route and answer are covered. The
gateway runs where schemathesis runs ASGI apps (its own event loop thread, lifespan included);
the replica runs in a portal of its own. Each operation gets a few generated cases in each
mode: hypothesis is derandomized, so a failure found here is found again on the next run.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pandas as pd
import pytest
import redis
import schemathesis
import schemathesis.specs.openapi.schemas  # see below
from anyio.from_thread import start_blocking_portal
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# schemathesis imports its OpenAPI modules on first use. Imported there, deep in a test's
# stack, pytest's assertion rewriting of them failed once with CPython 3.11.7's "AST
# constructor recursion depth mismatch"; imported here, at collection, they are rewritten at
# the top of the stack. The same for the auth module 4.32 imports on a case's first call
# (absent from older releases).
with contextlib.suppress(ModuleNotFoundError):
    importlib.import_module("schemathesis.wfc.escalation")
from gateway.app import build_app
from predictor.app import build_app as build_predictor
from predictor.cache import ModelCache
from shared.keys import heartbeat_key
from shared.model_loading import LoadedModel, LoadPolicy
from shared.settings import CommonSettings, GatewaySettings, PredictorSettings
from tests.support.shelf import ModelShelf
from tests.support.streams import running
from tests.support.waiting import wait_until

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
SIGNED = "scorer.signed"  # registered with a signature and no dataset spec


class TwoColumns:
    """A model that answers two named columns per row (as a custom pyfunc model may)."""

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"score": frame["amount"] * 2.0, "many": frame["items"] > 1})


@dataclass
class WithSignedModel(ModelShelf):
    """The churn shelf, and SIGNED v1 in production, loaded with its MLflow signature."""

    def production_versions(self) -> dict[str, int]:
        return {**super().production_versions(), SIGNED: 1}

    def load_model(self, name: str, version: int, policy: LoadPolicy) -> LoadedModel:
        if name != SIGNED:
            return super().load_model(name, version, policy)
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        inputs = Schema(
            [
                ColSpec("double", "amount"),
                ColSpec("integer", "items"),
                ColSpec("string", "note", required=False),
            ]
        )
        return LoadedModel("python_function", ModelSignature(inputs), TwoColumns(), False)


def advertised(common: CommonSettings, consumer: str) -> set[str]:
    client = redis.Redis.from_url(common.redis_url)
    try:
        raw = client.get(heartbeat_key("predictor", consumer))
    finally:
        client.close()
    return set(json.loads(raw).get("schemas", {})) if raw else set()


@pytest.fixture
def replica(common: CommonSettings, shelf: ModelShelf) -> Iterator[None]:
    settings = PredictorSettings(common=common, converge_s=3600)
    both = WithSignedModel(shelf.models, shelf.production, production_history=[1])
    app = build_predictor(settings, cache=ModelCache(), registry=both)
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(running(app)):
        # The gateway reads its routes from this heartbeat when it starts.
        wait_until(
            lambda: advertised(common, common.consumer_name) == {"churn", SIGNED},
            what="the replica advertising both models",
        )
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
        assert len(operations) >= 10, [o.label for o in operations]
        assert f"POST /v1/models/{SIGNED}/predict" in {o.label for o in operations}
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
