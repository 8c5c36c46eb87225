"""The registered models: what they hold, moving `production` (promote, rollback),
`challenger` (shadow) and `canary`.

These look models up in the registry, not in the served set: a model can be promoted before
any replica serves it. What is served shows in `serving` and `input` (the served set of
gateway.routes, the same one the predict routes follow)."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter

from gateway.api.deps import Context, Ctx, Mutating
from gateway.schemas import (
    CanaryRequest,
    ModelInfo,
    Promoted,
    PromoteRequest,
    ShadowRequest,
    VersionInfo,
    errors,
)
from shared.errors import ModelNotFound
from shared.events import ModelPromoted
from shared.registry import GatewayRegistry

router = APIRouter(tags=["models"])
_PUBLISH = "Redis cannot be reached to announce the move"


@router.get(
    "/v1/models/{model_name}",
    response_model=ModelInfo,
    responses=errors({404: "No registered model of that name"}),
)
async def model_info(model_name: str, ctx: Ctx) -> ModelInfo:
    registry = await _registry(ctx)
    versions = await anyio.to_thread.run_sync(registry.versions, model_name)
    if not versions:
        raise ModelNotFound(f"no registered model {model_name!r}")
    aliases = await anyio.to_thread.run_sync(registry.aliases, model_name)
    return ModelInfo(
        model_name=model_name,
        aliases=aliases,
        versions=[
            VersionInfo(
                version=v.version,
                run_id=v.run_id,
                aliases=sorted(a for a, n in aliases.items() if n == v.version),
                metrics=v.metrics,
                tags=v.tags,
            )
            for v in versions
        ],
        serving=ctx.fleet.serving(model_name),
        input=ctx.models.schema(model_name),
    )


@router.post(
    "/v1/models/{model_name}/promote",
    response_model=Promoted,
    dependencies=Mutating,
    responses=errors(
        {404: "No such model or version", 413: "Body over the size limit", 503: _PUBLISH},
        keyed=True,
        json_body=True,
    ),
)
async def promote_version(model_name: str, body: PromoteRequest, ctx: Ctx) -> Promoted:
    from shared.promotion import promote

    registry = await _registry(ctx)
    versions = await anyio.to_thread.run_sync(registry.versions, model_name)
    if body.version not in {v.version for v in versions}:
        raise ModelNotFound(f"model {model_name!r} has no version {body.version}")
    event = await anyio.to_thread.run_sync(promote, registry, model_name, body.version, "manual")
    return await _announce(ctx, event)


@router.post(
    "/v1/models/{model_name}/rollback",
    response_model=Promoted,
    dependencies=Mutating,
    responses=errors(
        {
            404: "No registered model of that name",
            409: "No earlier production version (NothingToRollBack)",
            503: _PUBLISH,
        },
        keyed=True,
    ),
)
async def rollback_version(model_name: str, ctx: Ctx) -> Promoted:
    from shared.promotion import rollback

    registry = await _registry(ctx)
    if not await anyio.to_thread.run_sync(registry.versions, model_name):
        raise ModelNotFound(f"no registered model {model_name!r}")
    event = await anyio.to_thread.run_sync(rollback, registry, model_name)
    return await _announce(ctx, event)


@router.post(
    "/v1/models/{model_name}/shadow",
    response_model=Promoted,
    dependencies=Mutating,
    responses=errors(
        {
            404: "No such model or version",
            409: "The version is production's own (InvalidShadow)",
            413: "Body over the size limit",
            503: _PUBLISH,
        },
        keyed=True,
        json_body=True,
    ),
)
async def shadow_version(model_name: str, body: ShadowRequest, ctx: Ctx) -> Promoted:
    """Make a version the model's challenger: every replica loads it and predicts `sample` of
    the online requests with it too, after they are answered (docs/rollout.md)."""
    from shared.promotion import shadow

    registry = await _version_of(ctx, model_name, body.version)
    event = await anyio.to_thread.run_sync(shadow, registry, model_name, body.version, body.sample)
    return await _announce(ctx, event)


@router.delete(
    "/v1/models/{model_name}/shadow",
    status_code=204,
    dependencies=Mutating,
    responses=errors({404: "No registered model of that name"}, keyed=True),
)
async def end_shadow(model_name: str, ctx: Ctx) -> None:
    """No challenger any more: the replicas drop it at their next converge."""
    registry = await _registered(ctx, model_name)
    await anyio.to_thread.run_sync(registry.end_shadow, model_name)


@router.post(
    "/v1/models/{model_name}/canary",
    response_model=Promoted,
    dependencies=Mutating,
    responses=errors(
        {
            404: "No such model or version",
            409: "The version is production's own (InvalidCanary)",
            413: "Body over the size limit",
            503: _PUBLISH,
        },
        keyed=True,
        json_body=True,
    ),
)
async def canary_version(model_name: str, body: CanaryRequest, ctx: Ctx) -> Promoted:
    """Route `percent` of the model's online requests to a version: every replica loads it,
    and once all of them hold it the gateways send it the requests whose `X-Routing-Key` (else
    request id) falls in its share; `X-Model-Version` says who answered (docs/rollout.md)."""
    from shared.promotion import canary

    registry = await _version_of(ctx, model_name, body.version)
    event = await anyio.to_thread.run_sync(canary, registry, model_name, body.version, body.percent)
    return await _announce(ctx, event)


@router.delete(
    "/v1/models/{model_name}/canary",
    status_code=204,
    dependencies=Mutating,
    responses=errors({404: "No registered model of that name", 503: _PUBLISH}, keyed=True),
)
async def end_canary(model_name: str, ctx: Ctx) -> None:
    """No canary any more: production answers every request again within a second."""
    from shared.promotion import end_canary

    registry = await _registered(ctx, model_name)
    event = await anyio.to_thread.run_sync(end_canary, registry, model_name)
    if event is not None:
        await ctx.bus.publish(event)


async def _version_of(ctx: Context, model_name: str, version: int) -> GatewayRegistry:
    """The registry, once it says `model_name` has `version` (ModelNotFound otherwise)."""
    registry = await _registry(ctx)
    versions = await anyio.to_thread.run_sync(registry.versions, model_name)
    if version not in {v.version for v in versions}:
        raise ModelNotFound(f"model {model_name!r} has no version {version}")
    return registry


async def _registered(ctx: Context, model_name: str) -> GatewayRegistry:
    """The registry, once it says `model_name` is registered (ModelNotFound otherwise)."""
    registry = await _registry(ctx)
    if not await anyio.to_thread.run_sync(registry.versions, model_name):
        raise ModelNotFound(f"no registered model {model_name!r}")
    return registry


async def _registry(ctx: Context) -> GatewayRegistry:
    return await anyio.to_thread.run_sync(ctx.the_registry)  # first use imports mlflow


async def _announce(ctx: Context, event: ModelPromoted) -> Promoted:
    await ctx.bus.publish(event)
    return Promoted(
        model_name=event.model_name,
        version=event.version,
        previous_version=event.previous_version,
        reason=event.reason,
        alias=event.alias,
        event_id=str(event.event_id),
    )
