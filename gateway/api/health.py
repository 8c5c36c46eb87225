"""Liveness, readiness and the metrics scrape."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Response

from gateway.api.deps import Ctx
from gateway.schemas import Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def metrics(ctx: Ctx) -> Response:
    """The gateway's own metrics and the streams' (XINFO, read at each scrape)."""
    body, kind = await anyio.to_thread.run_sync(ctx.metrics.exposition, ctx.streams_collector())
    return Response(body, media_type=kind)


@router.get(
    "/readyz",
    summary="Redis answers and a predictor serves a model",
    response_model=Readiness,
    # Not an error: the same body, for load balancers that only read the status.
    responses={503: {"model": Readiness, "description": "Not ready (the body says why)"}},
)
async def readyz(ctx: Ctx, response: Response) -> Readiness:
    try:
        redis_ok = await ctx.bus.ping()
        await ctx.fleet.refresh()
    except Exception:  # readiness answers whatever is broken, it never fails itself
        redis_ok = False
    serving = {r: m for r, m in ctx.fleet.replicas.items() if m}
    ready = redis_ok and bool(serving)
    response.status_code = 200 if ready else 503
    return Readiness(ready=ready, redis=redis_ok, predictors=serving)
