"""The served models and their predict routes, kept up to date while the gateway runs.

Served are the models a dataset spec trains (gateway.specs) and the models a live replica
advertises with a schema (gateway.fleet); for a model with a spec the spec's schema wins, as
its constraints are the ones the model was trained under. `ServedRoutes.reconcile` makes the
app's routes match: it adds a route for a new model, replaces one whose schema changed (its
fingerprint) and removes the route of a model that nothing serves any more, then drops the
cached OpenAPI document so /openapi.json shows the current models and their columns.

It runs about every second (`run`, from the lifespan) and on a miss: a request for a model
with no route reaches the catch-all, which reads the fleet again and reconciles before it
answers 404, so a model advertised a moment ago answers at once.

Every gunicorn worker has its own app and reconciles on its own. A spec model that no replica
serves keeps its route: the predictors answer 503 (NoModelInService, or NoPredictor when none
is alive), as before models could come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Match, Route

from gateway.api.deps import Replicas
from gateway.api.predict import PATH, Plan, not_served, predict_router
from gateway.fleet import Warned
from shared.schema import ModelSchema

log = logging.getLogger(__name__)
MISS_REFRESH_S = 0.25  # a flood of unknown names reads Redis at most this often
UNROUTABLE = frozenset("/{}")  # a name with these would not be one path segment
_PREFIX, _SUFFIX = PATH.split("{model_name}")


@dataclass
class _Served:
    schema: ModelSchema
    fingerprint: str
    route: APIRoute
    plan: Plan


@dataclass
class ServedRoutes:
    """The Catalog of gateway.api.deps, and the keeper of the predict routes.

    Routes change on the event loop only (the periodic task and the catch-all are coroutines
    on it, and `reconcile` never awaits), and Starlette matches a request against the route
    list in one synchronous pass: a request never sees a half-changed list, so no lock."""

    app: FastAPI
    specs: Callable[[], dict[str, ModelSchema]]
    fleet: Replicas
    max_rows: int
    interval: float = 1.0
    _served: dict[str, _Served] = field(default_factory=dict)
    _schemas: dict[str, ModelSchema] = field(default_factory=dict)
    catch_all: Route | None = None
    _refresh: asyncio.Task[None] | None = None
    _refreshed_at: float = float("-inf")
    _task: asyncio.Task[None] | None = None
    _warn: Warned = field(default_factory=Warned)

    def install(self) -> None:
        """The catch-all, then the routes of the models known now (the specs'). Call where
        the predict routes belong among the app's routes: they go just before it."""
        self.catch_all = Route(
            PATH,
            _CatchAll(self),
            methods=["POST"],
            name="predict_unknown",
            include_in_schema=False,
        )
        self.app.router.routes.append(self.catch_all)
        self.reconcile()

    # --- Catalog -------------------------------------------------------------------------

    def schema(self, model_name: str) -> ModelSchema | None:
        return self._schemas.get(model_name)

    def names(self) -> list[str]:
        return sorted(self._schemas)

    async def find(self, model_name: str) -> ModelSchema | None:
        if model_name not in self._schemas:
            await self._fresh_fleet()
            self.reconcile()
        return self._schemas.get(model_name)

    # --- Keeping the routes -------------------------------------------------------------

    def wanted(self) -> dict[str, ModelSchema]:
        """Model → schema of every model served now (a spec's schema over an advertised one)."""
        wanted = {**self.fleet.advertised(), **self.specs()}
        for name in [n for n in wanted if UNROUTABLE & set(n) or not n.isprintable()]:
            self._warn(f"model {name!r} cannot have a predict route (its name); not served")
            del wanted[name]
        return wanted

    def reconcile(self) -> None:
        wanted = self.wanted()
        changed = [self._remove(name) for name in set(self._served) - set(wanted)]
        for name, schema in sorted(wanted.items()):
            served = self._served.get(name)
            if served is None or served.fingerprint != schema.fingerprint():
                try:
                    changed.append(self._put(schema, served))
                except Exception as exc:  # one odd schema must not hold the others back
                    self._warn(f"no predict route for {name!r} ({schema.fingerprint()}): {exc}")
                    if served is None:
                        del wanted[name]
                    else:
                        wanted[name] = served.schema  # the route it still has
        self._schemas = wanted
        if changed:
            self.app.openapi_schema = None  # generated again, from the routes as they are
            log.info("predict routes: %s", "; ".join(changed))

    def _put(self, schema: ModelSchema, old: _Served | None) -> str:
        plan = Plan.of(schema, self.max_rows)
        (route,) = predict_router(plan).routes
        assert isinstance(route, APIRoute)
        routes = self.app.router.routes
        if old is None:
            assert self.catch_all is not None, "install() first"
            routes.insert(routes.index(self.catch_all), route)
        else:
            routes[routes.index(old.route)] = route
        self._served[schema.model_name] = _Served(schema, schema.fingerprint(), route, plan)
        verb = "added" if old is None else "replaced"
        return f"{verb} {schema.model_name} ({schema.source}: {', '.join(schema.names)})"

    def _remove(self, name: str) -> str:
        self.app.router.routes.remove(self._served.pop(name).route)
        return f"removed {name}"

    def route_of(self, model_name: str) -> APIRoute | None:
        served = self._served.get(model_name)
        return None if served is None else served.route

    def plan_of(self, path: str) -> tuple[Plan, APIRoute] | None:
        """The plan and route of a predict path, when it names a model with a route."""
        served = self._served.get(path[len(_PREFIX) : -len(_SUFFIX)])
        if served is None or served.route.path != path:
            return None
        return served.plan, served.route

    # --- Running ------------------------------------------------------------------------

    async def start(self) -> None:
        self.reconcile()  # the fleet has been read by now: advertised models from the start
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        for task in (self._task, self._refresh):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.reconcile()
            except Exception:  # a bug here must not stop the routes from following later
                log.exception("reconciling the predict routes failed")

    async def _fresh_fleet(self) -> None:
        """Read the heartbeats again, unless that was done within MISS_REFRESH_S: misses at
        the same moment share one read."""
        if self._refresh is None or (
            self._refresh.done() and time.monotonic() - self._refreshed_at > MISS_REFRESH_S
        ):
            self._refreshed_at = time.monotonic()
            self._refresh = asyncio.create_task(self._read_fleet())
        await asyncio.shield(self._refresh)

    async def _read_fleet(self) -> None:
        try:
            await self.fleet.refresh()
        except Exception as exc:  # the miss is answered from what is known
            log.warning("reading predictor heartbeats on a miss failed: %s", exc)


class _CatchAll:
    """POST /v1/models/<name>/predict for a name with no route of its own (an ASGI app, so it
    can hand the request, body unread, to the route that the miss may have just added)."""

    def __init__(self, served: ServedRoutes) -> None:
        self.served = served

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["route"] = self.served.catch_all  # one metrics series for every unknown name
        name = scope["path_params"]["model_name"]
        await self.served.find(name)
        route = self.served.route_of(name)
        if route is None:
            raise not_served(name, self.served.names())
        match, child = route.matches(scope)
        if match is not Match.FULL:  # cannot be: same path, both POST
            raise not_served(name, self.served.names())
        scope.update(child)
        await route.handle(scope, receive, send)
