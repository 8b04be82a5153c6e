"""Liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from floe.server.gateway.families import Family, GatewayContext
from floe.server.gateway.state import service
from floe.server.services.health import HealthService

router = APIRouter()


def _build(ctx: GatewayContext) -> HealthService:
    return HealthService(ctx.handle("engine"), ctx.handle("registry"), ctx.metrics,
                         ctx.config.http.ready_timeout_s)


family = Family("ops", router, _build)


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/ready")
async def ready(health: HealthService = Depends(service("ops"))):
    result = await health.readiness()
    return JSONResponse(result, status_code=200 if result["ready"] else 503,
                        headers={} if result["ready"] else {"Retry-After": "5"})


@router.get("/metrics")
async def metrics(health: HealthService = Depends(service("ops"))):
    return Response(await health.scrape(), media_type=CONTENT_TYPE_LATEST)
