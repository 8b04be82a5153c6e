"""/v1/retrieval/collections: create / list / get / delete, upsert points, search."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from floe.server.gateway.body import json_body, read_json_object
from floe.server.gateway.families import NO_RUNTIME, Family, GatewayContext
from floe.server.gateway.routes.embeddings import embedding_service
from floe.server.gateway.state import service
from floe.server.schemas.common import parse
from floe.server.schemas.retrieval import CollectionCreateRequest, SearchRequest, UpsertRequest
from floe.server.services.retrieval import RetrievalService

router = APIRouter(prefix="/v1/retrieval/collections")


def _build(ctx: GatewayContext) -> RetrievalService | None:
    runtime, store = ctx.handle("runtime"), ctx.handle("store")
    if runtime is None or store is None:
        return None
    return RetrievalService(store, embedding_service(ctx, runtime), ctx.config.retrieval)


family = Family("retrieval", router, _build, unavailable=NO_RUNTIME)


@router.post("", openapi_extra=json_body(CollectionCreateRequest))
async def create_collection(request: Request, retrieval: RetrievalService = Depends(service("retrieval"))):
    body = await read_json_object(request)
    info = await retrieval.create(parse(CollectionCreateRequest, body))
    return JSONResponse(info, status_code=201)


@router.get("")
async def list_collections(retrieval: RetrievalService = Depends(service("retrieval"))):
    return {"object": "list", "data": await retrieval.collections()}


@router.get("/{name}")
async def get_collection(name: str, retrieval: RetrievalService = Depends(service("retrieval"))):
    return await retrieval.get(name)


@router.delete("/{name}")
async def delete_collection(name: str, retrieval: RetrievalService = Depends(service("retrieval"))):
    await retrieval.delete(name)
    return {"id": name, "object": "retrieval.collection.deleted", "deleted": True}


@router.post("/{name}/points", openapi_extra=json_body(UpsertRequest))
async def upsert_points(name: str, request: Request, retrieval: RetrievalService = Depends(service("retrieval"))):
    body = await read_json_object(request)
    return await retrieval.upsert(name, parse(UpsertRequest, body))


@router.post("/{name}/search", openapi_extra=json_body(SearchRequest))
async def search(name: str, request: Request, retrieval: RetrievalService = Depends(service("retrieval"))):
    body = await read_json_object(request)
    return await retrieval.search(name, parse(SearchRequest, body))
