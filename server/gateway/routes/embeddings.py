"""POST /v1/embeddings (OpenAI shape)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from floe.server.gateway.body import read_json_object
from floe.server.gateway.routes.runtime_common import runtime_services
from floe.server.gateway.state import GatewayState, api_auth, gateway_state
from floe.server.schemas.common import parse
from floe.server.schemas.embeddings import EmbeddingRequest

router = APIRouter(dependencies=[Depends(api_auth)])


@router.post("/v1/embeddings")
async def create_embeddings(request: Request, state: GatewayState = Depends(gateway_state)):
    body = await read_json_object(request, state.config.http.max_body_bytes)
    return (await runtime_services(state).embeddings.create(parse(EmbeddingRequest, body))).model_dump()
