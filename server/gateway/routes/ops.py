"""Liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from floe.server.gateway.state import GatewayState, gateway_state

router = APIRouter()


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: GatewayState = Depends(gateway_state)):
    result = await state.health.readiness()
    return JSONResponse(result, status_code=200 if result["ready"] else 503,
                        headers={} if result["ready"] else {"Retry-After": "5"})


@router.get("/metrics")
async def metrics(state: GatewayState = Depends(gateway_state)):
    return Response(await state.health.scrape(), media_type=CONTENT_TYPE_LATEST)
