"""The predict fast path (gateway.fastpath) against the FastAPI route it stands in front of:
every request below is sent to a gateway with the fast path and to one without, and the two
answers must be the same, status, body and headers, whether the request is valid, refused by
validation (the 422s and their locations), oversized, or of another content type."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import generate_latest

from gateway.app import build_app
from shared.settings import BUNDLED_DATASETS, CommonSettings, GatewaySettings
from tests.service.gateway_fakes import FakeBus, FakeCoalescer, FakeFleet
from tests.support.data import CHURN_ROW
from tests.support.shelf import ModelShelf

pytestmark = pytest.mark.anyio
PREDICT = "/v1/models/churn/predict"
JSON = {"Content-Type": "application/json", "X-Request-Id": "same-id"}
# Headers that differ between any two answers, whoever makes them.
VARYING = {"date"}


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


REQUESTS: dict[str, tuple[bytes, dict[str, str]]] = {
    "valid, one row": (_body({"rows": [CHURN_ROW]}), JSON),
    "valid, two rows": (_body({"rows": [CHURN_ROW, {**CHURN_ROW, "plan": "premium"}]}), JSON),
    "valid, charset given": (
        _body({"rows": [CHURN_ROW]}),
        {**JSON, "Content-Type": "application/json; charset=utf-8"},
    ),
    "valid, extra column ignored": (_body({"rows": [{**CHURN_ROW, "x": 1}]}), JSON),
    "valid, nullable left out": (
        _body({"rows": [{k: v for k, v in CHURN_ROW.items() if k != "satisfaction"}]}),
        JSON,
    ),
    "malformed JSON": (b'{"rows": [', JSON),
    "empty body": (b"", JSON),
    "not an object": (_body([CHURN_ROW]), JSON),
    "no rows": (_body({"rows": []}), JSON),
    "rows missing": (_body({}), JSON),
    "unknown top-level field": (_body({"rows": [CHURN_ROW], "extra": 1}), JSON),
    "wrong type": (_body({"rows": [{**CHURN_ROW, "tenure_months": "twelve"}]}), JSON),
    "out of range": (_body({"rows": [{**CHURN_ROW, "tenure_months": -1}]}), JSON),
    "not an allowed value": (_body({"rows": [{**CHURN_ROW, "plan": "gold"}]}), JSON),
    "required column missing": (
        _body({"rows": [{k: v for k, v in CHURN_ROW.items() if k != "plan"}]}),
        JSON,
    ),
    "NaN, which only json.loads reads": (
        b'{"rows": [' + _body({**CHURN_ROW})[:-1] + b', "usage_gb": NaN}]}',
        JSON,
    ),
    "text/plain": (_body({"rows": [CHURN_ROW]}), {**JSON, "Content-Type": "text/plain"}),
    "no content type": (_body({"rows": [CHURN_ROW]}), {"X-Request-Id": "same-id"}),
    "too many rows": (_body({"rows": [CHURN_ROW] * 4}), JSON),
    "body over the limit": (_body({"rows": [CHURN_ROW] * 40}), JSON),
}


@contextlib.asynccontextmanager
async def gateway(
    tmp_path: Path, fast_path: bool
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    common = CommonSettings(
        redis_url="redis://127.0.0.1:1/0",  # never used: every Redis part is a fake
        feature_store_root=tmp_path / "store",
        datasets_dir=BUNDLED_DATASETS,
    )
    settings = GatewaySettings(
        common=common,
        inbox=tmp_path / "inbox",
        fast_path=fast_path,
        max_rows_per_request=3,
        max_body_bytes=4096,
    )
    shelf = ModelShelf({1: None}, production=1, production_history=[1])
    fleet = FakeFleet({"fake-replica": {"churn": 3}})
    app = build_app(settings, shelf, coalescer=FakeCoalescer(), fleet=fleet, bus=FakeBus())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            yield http, app


def _seen(answer: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    headers = {k: v for k, v in answer.headers.items() if k not in VARYING}
    try:
        body = answer.json()
    except ValueError:
        body = answer.text
    return answer.status_code, body, headers


async def test_every_answer_is_the_one_the_fastapi_route_gives(tmp_path: Path) -> None:
    seen: dict[bool, dict[str, tuple[int, Any, dict[str, str]]]] = {}
    for fast in (True, False):
        async with gateway(tmp_path / str(fast), fast) as (http, _):
            seen[fast] = {
                case: _seen(await http.post(PREDICT, content=body, headers=headers))
                for case, (body, headers) in REQUESTS.items()
            }
    for case in REQUESTS:
        assert seen[True][case] == seen[False][case], case
    statuses = {case: status for case, (status, _, _) in seen[True].items()}
    # The cases cover what they say: answers, refusals by validation, and the limits.
    assert statuses["valid, one row"] == statuses["valid, charset given"] == 200
    assert statuses["wrong type"] == statuses["malformed JSON"] == 422
    assert statuses["too many rows"] == statuses["body over the limit"] == 413
    locations = [e["loc"] for e in seen[True]["out of range"][1]["detail"]]
    assert locations == [["body", "rows", 0, "tenure_months"]]
    # A NaN is refused with a 422 that shows it, not a 500 (FastAPI cannot render it).
    (refusal,) = seen[True]["NaN, which only json.loads reads"][1]["detail"]
    assert (refusal["type"], refusal["input"]) == ("finite_number", "nan")


async def test_the_fast_path_counts_requests_under_the_route_as_fastapi_does(
    tmp_path: Path,
) -> None:
    lines: dict[bool, list[str]] = {}
    for fast in (True, False):
        async with gateway(tmp_path / str(fast), fast) as (http, app):
            for case in ("valid, one row", "valid, two rows", "wrong type"):
                body, headers = REQUESTS[case]
                await http.post(PREDICT, content=body, headers=headers)
            text = generate_latest(app.state.context.metrics.registry).decode()
        lines[fast] = sorted(
            line for line in text.splitlines() if line.startswith("streamops_http_requests_total")
        )
    assert lines[True] == lines[False]
    counted = f'streamops_http_requests_total{{method="POST",route="{PREDICT}",status="200"}} 2.0'
    assert counted in lines[True]
