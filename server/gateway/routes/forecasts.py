"""POST /v1/forecasts: Time-LLM forecasts from a timeseries adapter on the FrozenRuntime."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from floe.server.gateway.body import read_json_object
from floe.server.gateway.routes.runtime_common import runtime_services
from floe.server.gateway.state import GatewayState, api_auth, gateway_state
from floe.server.schemas.common import parse
from floe.server.schemas.forecasts import ForecastRequest

router = APIRouter(dependencies=[Depends(api_auth)])


@router.post("/v1/forecasts")
async def create_forecast(request: Request, state: GatewayState = Depends(gateway_state)):
    body = await read_json_object(request, state.config.http.max_body_bytes)
    return (await runtime_services(state).forecasts.forecast(parse(ForecastRequest, body))).model_dump(
        exclude_none=True)
