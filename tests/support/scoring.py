"""Batch jobs through the gateway, for the e2e tests: ask, then poll the job's status."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.waiting import wait_until


def scored(http: httpx.Client, model: str, source: dict[str, Any], timeout: float = 90) -> Any:
    """Ask for a job scoring `source` (a `score-requested` input) with `model`; its status once
    done. Fails at once on a refusal, with the reason."""
    accepted = http.post("/v1/score", json={"model_name": model, "input": source})
    assert accepted.status_code == 202, accepted.text
    status_url = accepted.json()["status_url"]

    def done() -> dict[str, Any]:
        response = http.get(status_url)
        if response.status_code == 404:  # not planned yet
            return {}
        status: dict[str, Any] = response.json()
        assert status["status"] != "rejected", status["error"]
        return status if status["status"] == "done" else {}

    return wait_until(done, timeout=timeout, what=f"the scoring job on {source}")
