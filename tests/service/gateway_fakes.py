"""Hand-written fakes for the gateway's ports (gateway.api.deps): the coalescer, the fleet and
Redis. The registry's fake is the in-memory shelf (tests.support.shelf)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.coalesce import Answer
from gateway.fleet import Beat, Warned, newest_schemas, parse_beat
from shared.events import BatchPredicted, Event
from shared.jobs import JobStatus
from shared.schema import ModelSchema


@dataclass
class FakeCoalescer:
    """Answers every row with class 1 (probability 0.8), or, given `predictions`, with those
    in turn as a model that is no classifier would; or raises `failure` (every time) or the
    next of `failures` (once each, before answering)."""

    failure: Exception | None = None
    failures: list[Exception] = field(default_factory=list)
    version: int = 3
    predictions: list[Any] | None = None
    # What it was asked: model, column → values (as the batch will carry them), rows.
    asked: list[tuple[str, dict[str, list[Any]], int]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    targets: list[int | None] = field(default_factory=list)

    async def predict(
        self,
        model_name: str,
        columns: tuple[str, ...],
        values: Sequence[tuple[Any, ...]],
        request_id: str,
        target: int | None = None,
    ) -> Answer:
        rows = len(values)
        self.request_ids.append(request_id)
        self.targets.append(target)
        by_column = {name: [row[i] for row in values] for i, name in enumerate(columns)}
        self.asked.append((model_name, by_column, rows))
        if self.failure is not None:
            raise self.failure
        if self.failures:
            raise self.failures.pop(0)
        given = self.predictions
        batch = BatchPredicted(
            request_id=uuid.uuid4(),
            model_name=model_name,
            model_version=target or self.version,  # a canary answers as itself
            predictions=[1] * rows
            if given is None
            else [given[i % len(given)] for i in range(rows)],
            probabilities=[[0.2, 0.8]] * rows if given is None else None,
            classes=[0, 1] if given is None else None,
            replica="fake-replica",
        )
        return Answer(batch, 0, rows)


@dataclass
class FakeFleet:
    """The replicas' heartbeats with no Redis: `replicas` (replica → model → version) and
    `schemas` (replica → model → schema, as JSON, the way a replica advertises it), which a
    test changes as it likes. The schemas go through the fleet's own parsing, so a malformed
    one is left out exactly as the real fleet leaves it out."""

    replicas: dict[str, dict[str, int]] = field(default_factory=dict)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    warned: Warned = field(default_factory=Warned)
    refreshes: int = 0
    canaries: dict[str, tuple[int, float]] = field(default_factory=dict)

    def alive(self) -> bool:
        return bool(self.replicas)

    def serving(self, model_name: str) -> dict[str, int]:
        return {r: m[model_name] for r, m in self.replicas.items() if model_name in m}

    def canary(self, model_name: str) -> tuple[int, float] | None:
        return self.canaries.get(model_name)

    def advertised(self) -> dict[str, ModelSchema]:
        beats: dict[str, Beat] = {
            replica: parse_beat(
                replica, {"models": models, "schemas": self.schemas.get(replica)}, self.warned
            )
            for replica, models in self.replicas.items()
        }
        return newest_schemas(beats)

    def advertise(self, replica: str, schema: ModelSchema | dict[str, Any], version: int) -> None:
        """`replica` serves `version` of the schema's model, and says so with its schema."""
        raw = schema.model_dump(mode="json") if isinstance(schema, ModelSchema) else schema
        name = raw["model_name"]
        self.replicas.setdefault(replica, {})[name] = version
        self.schemas.setdefault(replica, {})[name] = raw

    def withdraw(self, replica: str, model_name: str) -> None:
        self.replicas.get(replica, {}).pop(model_name, None)
        self.schemas.get(replica, {}).pop(model_name, None)

    async def refresh(self) -> None:
        self.refreshes += 1


@dataclass
class FakeBus:
    """Keeps what was published, and answers jobs from a dict."""

    published: list[Event] = field(default_factory=list)
    jobs: dict[str, JobStatus] = field(default_factory=dict)
    up: bool = True

    async def publish(self, event: Event) -> str:
        self.published.append(event)
        return f"{len(self.published)}-0"

    async def job(self, job_id: str) -> JobStatus | None:
        return self.jobs.get(job_id)

    async def ping(self) -> bool:
        return self.up
