"""What the gateway knows about the predictor replicas: their heartbeats.

Each replica's heartbeat (`streamops:heartbeat:{predictor}:<consumer>`) carries the version of
each model it serves, from replicas that know it the model's input schema, and the canary it
holds beside production: `{"models": {name: version}, "schemas": {name: ModelSchema as JSON},
"canaries": {name: [version, share]}}`. The gateway reads them every second, so a predict
request with no replica alive is answered 503 at once instead of waiting for its timeout,
`/readyz` says whether anything can answer, the routes follow the models the replicas
advertise (gateway.routes), and requests go to a canary only while every replica serving the
model holds it (agreed_canaries; docs/rollout.md).

A heartbeat is input from another process: anything malformed in it (a schema that does not
validate, a version that is not a number) is logged once and left out, never raised. An old
heartbeat without "schemas" still says what is served; its models get a route only from a
dataset spec.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError

from shared.keys import heartbeat_key
from shared.schema import ModelSchema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Beat:
    """One replica's heartbeat, as far as it is well formed."""

    models: dict[str, int]
    schemas: dict[str, ModelSchema]
    # model → (its canary's version, the share of requests routed to it)
    canaries: dict[str, tuple[int, float]] = field(default_factory=dict)


@dataclass
class Warned:
    """Each distinct complaint once: a replica beats every few seconds, the log must not."""

    said: set[str] = field(default_factory=set)

    def __call__(self, message: str) -> None:
        if message not in self.said:
            self.said.add(message)
            log.warning("%s", message)


def parse_beat(replica: str, payload: Any, warn: Warned) -> Beat:
    """The models and schemas of one decoded heartbeat; what is malformed is left out."""
    if not isinstance(payload, dict):
        warn(f"heartbeat of {replica} is not a JSON object; ignored")
        return Beat({}, {})
    models = _versions(replica, payload.get("models"), warn)
    canaries = _canaries(replica, payload.get("canaries"), warn)
    raw = payload.get("schemas")
    if raw is None:
        return Beat(models, {}, canaries)  # an older replica: versions only
    if not isinstance(raw, dict):
        warn(f"heartbeat of {replica}: 'schemas' is not an object; ignored")
        return Beat(models, {}, canaries)
    schemas = {}
    for name, value in raw.items():
        schema = _schema(replica, name, value, warn)
        if schema is not None and name in models:
            schemas[name] = schema
    return Beat(models, schemas, canaries)


def _canaries(replica: str, raw: Any, warn: Warned) -> dict[str, tuple[int, float]]:
    """`{name: [version, share]}`; an older replica says nothing (no canary held)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        warn(f"heartbeat of {replica}: 'canaries' is not an object; ignored")
        return {}
    out = {}
    for name, value in raw.items():
        try:
            version, share = value
            held = (int(version), float(share))
        except (TypeError, ValueError):
            warn(f"heartbeat of {replica}: canary {value!r} of {name!r} is not [version, share]")
            continue
        if held[0] >= 1 and 0 < held[1] <= 1:
            out[str(name)] = held
        else:
            warn(f"heartbeat of {replica}: canary {value!r} of {name!r} is out of range")
    return out


def _versions(replica: str, raw: Any, warn: Warned) -> dict[str, int]:
    if not isinstance(raw, dict):
        if raw is not None:
            warn(f"heartbeat of {replica}: 'models' is not an object; ignored")
        return {}
    out = {}
    for name, version in raw.items():
        if version is None:
            continue
        try:
            out[str(name)] = int(version)
        except (TypeError, ValueError):
            warn(f"heartbeat of {replica}: version {version!r} of {name!r} is not a number")
    return out


def _schema(replica: str, name: str, value: Any, warn: Warned) -> ModelSchema | None:
    try:
        schema = ModelSchema.model_validate(value)
    except ValidationError as exc:
        warn(f"heartbeat of {replica}: schema of {name!r} is malformed, ignored: {exc}")
        return None
    if schema.model_name != name:
        warn(f"heartbeat of {replica}: schema under {name!r} is {schema.model_name!r}'s; ignored")
        return None
    return schema


def newest_schemas(beats: dict[str, Beat]) -> dict[str, ModelSchema]:
    """Per model, the schema of the replica serving its highest version: during a swap the
    replicas disagree, and the newest version is the one every replica is moving to (ties
    go to the first replica by name, so every gateway worker picks the same one)."""
    best: dict[str, tuple[int, ModelSchema]] = {}
    for replica in sorted(beats):
        beat = beats[replica]
        for name, schema in beat.schemas.items():
            version = beat.models[name]
            if name not in best or version > best[name][0]:
                best[name] = (version, schema)
    return {name: schema for name, (_, schema) in best.items()}


def agreed_canaries(beats: dict[str, Beat]) -> dict[str, tuple[int, float]]:
    """Per model, its canary when every replica serving the model holds the same one (version
    and share): while one is still loading it or has dropped it, production answers all."""
    agreed: dict[str, tuple[int, float]] = {}
    for name in {name for beat in beats.values() for name in beat.canaries}:
        held = {beat.canaries.get(name) for beat in beats.values() if name in beat.models}
        if len(held) == 1 and None not in held:
            (agreed[name],) = held  # type: ignore[assignment]
    return agreed


@dataclass
class Fleet:
    client: aioredis.Redis
    interval: float = 1.0
    replicas: dict[str, dict[str, int]] = field(default_factory=dict)
    _advertised: dict[str, ModelSchema] = field(default_factory=dict)
    _canaries: dict[str, tuple[int, float]] = field(default_factory=dict)
    _warn: Warned = field(default_factory=Warned)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def alive(self) -> bool:
        return bool(self.replicas)

    def serving(self, model_name: str) -> dict[str, int]:
        """Replica → version of `model_name` it serves."""
        return {
            replica: models[model_name]
            for replica, models in self.replicas.items()
            if models.get(model_name) is not None
        }

    def canary(self, model_name: str) -> tuple[int, float] | None:
        """The canary of `model_name` (version, share routed to it) when every replica serving
        the model holds the same one; None otherwise, so no request is routed to a version a
        replica cannot answer with (see agreed_canaries)."""
        return self._canaries.get(model_name)

    def advertised(self) -> dict[str, ModelSchema]:
        """Model → the input schema the replicas serve it with (see newest_schemas)."""
        return self._advertised

    async def refresh(self) -> None:
        prefix = heartbeat_key("predictor", "")
        keys = [key async for key in self.client.scan_iter(match=f"{prefix}*", count=200)]
        values = await self.client.mget(keys) if keys else []
        beats: dict[str, Beat] = {}
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue  # expired between the scan and the read
            replica = key.decode()[len(prefix) :]
            beats[replica] = parse_beat(replica, _decoded(value), self._warn)
        # Both at once, with no await between: a reader never sees one without the other.
        self.replicas = {replica: beat.models for replica, beat in beats.items()}
        self._advertised = newest_schemas(beats)
        self._canaries = agreed_canaries(beats)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:
                log.warning("reading predictor heartbeats failed", exc_info=True)


def _decoded(value: bytes | str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return None  # parse_beat says it is not an object
