"""POST /v1/forecasts: forecasts from a kind that serves them (Time-LLM) on the FrozenRuntime."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from floe.server.gateway.body import json_body, read_json_object
from floe.server.gateway.families import runtime_family
from floe.server.gateway.state import service
from floe.server.schemas.common import parse
from floe.server.schemas.forecasts import ForecastRequest
from floe.server.services.forecasts import ForecastService

router = APIRouter()


family = runtime_family("forecasts", router, lambda ctx, runtime: ForecastService(
    ctx.base_name, runtime, ctx.handle("registry")))


@router.post("/v1/forecasts", openapi_extra=json_body(ForecastRequest))
async def create_forecast(request: Request, forecasts: ForecastService = Depends(service("forecasts"))):
    req = parse(ForecastRequest, await read_json_object(request))
    return (await forecasts.forecast(req)).model_dump(exclude_none=True)
