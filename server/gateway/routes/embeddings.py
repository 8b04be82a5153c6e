"""POST /v1/embeddings (OpenAI shape), on the FrozenRuntime."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from floe.server.gateway.body import json_body, read_json_object
from floe.server.gateway.families import GatewayContext, runtime_family
from floe.server.gateway.state import service
from floe.server.schemas.common import parse
from floe.server.schemas.embeddings import EmbeddingRequest
from floe.server.services.embeddings import EmbeddingService

router = APIRouter()


def embedding_service(ctx: GatewayContext, runtime: Any) -> EmbeddingService:
    return EmbeddingService(ctx.base_name, runtime, ctx.handle("registry"), ctx.config.runtime.max_embedding_inputs)


family = runtime_family("embeddings", router, embedding_service)


@router.post("/v1/embeddings", openapi_extra=json_body(EmbeddingRequest))
async def create_embeddings(request: Request, embeddings: EmbeddingService = Depends(service("embeddings"))):
    req = parse(EmbeddingRequest, await read_json_object(request))
    return (await embeddings.create(req)).model_dump()
