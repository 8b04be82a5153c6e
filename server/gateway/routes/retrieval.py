"""/v1/retrieval/collections: create / list / get / delete, upsert points, search."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from floe.server.gateway.body import read_json_object
from floe.server.gateway.routes.runtime_common import runtime_services
from floe.server.gateway.state import GatewayState, api_auth, gateway_state
from floe.server.schemas.common import parse
from floe.server.schemas.retrieval import CollectionCreateRequest, SearchRequest, UpsertRequest

router = APIRouter(prefix="/v1/retrieval/collections", dependencies=[Depends(api_auth)])


@router.post("")
async def create_collection(request: Request, state: GatewayState = Depends(gateway_state)):
    body = await read_json_object(request, state.config.http.max_body_bytes)
    info = await runtime_services(state).retrieval.create(parse(CollectionCreateRequest, body))
    return JSONResponse(info, status_code=201)


@router.get("")
async def list_collections(state: GatewayState = Depends(gateway_state)):
    return {"object": "list", "data": await runtime_services(state).retrieval.list()}


@router.get("/{name}")
async def get_collection(name: str, state: GatewayState = Depends(gateway_state)):
    return await runtime_services(state).retrieval.get(name)


@router.delete("/{name}")
async def delete_collection(name: str, state: GatewayState = Depends(gateway_state)):
    await runtime_services(state).retrieval.delete(name)
    return {"id": name, "object": "retrieval.collection.deleted", "deleted": True}


@router.post("/{name}/points")
async def upsert_points(name: str, request: Request, state: GatewayState = Depends(gateway_state)):
    body = await read_json_object(request, state.config.http.max_body_bytes)
    return await runtime_services(state).retrieval.upsert(name, parse(UpsertRequest, body))


@router.post("/{name}/search")
async def search(name: str, request: Request, state: GatewayState = Depends(gateway_state)):
    body = await read_json_object(request, state.config.http.max_body_bytes)
    return await runtime_services(state).retrieval.search(name, parse(SearchRequest, body))
