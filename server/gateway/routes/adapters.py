"""Adapter administration: POST / GET / DELETE /v1/adapters."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from floe.server.errors import InvalidRequest
from floe.server.gateway.body import read_json_object
from floe.server.gateway.families import Family
from floe.server.gateway.state import admin_auth, service
from floe.server.services.adapters import AdapterService

router = APIRouter(dependencies=[Depends(admin_auth)])
family = Family("adapters", router, lambda ctx: AdapterService(
    ctx.handle("engine"), ctx.handle("registry"), ctx.handle("runtime")))


@router.post("/v1/adapters")
async def add_adapter(request: Request, adapters: AdapterService = Depends(service("adapters"))):
    body = await read_json_object(request)
    unknown = set(body) - {"name", "source"}
    if unknown:
        raise InvalidRequest(f"unknown fields: {sorted(unknown)}", param=sorted(unknown)[0])
    for field in ("name", "source"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise InvalidRequest(f"`{field}` is required and must be a non-empty string", param=field)
    ref, created = await adapters.add(body["name"], body["source"])
    return JSONResponse(ref.public(), status_code=201 if created else 200)


@router.get("/v1/adapters")
async def list_adapters(adapters: AdapterService = Depends(service("adapters"))):
    return {"object": "list", "data": [ref.public() for ref in await adapters.list()]}


@router.get("/v1/adapters/{name}")
async def get_adapter(name: str, adapters: AdapterService = Depends(service("adapters"))):
    return (await adapters.get(name)).public()


@router.delete("/v1/adapters/{name}")
async def delete_adapter(name: str, adapters: AdapterService = Depends(service("adapters"))):
    ref = await adapters.remove(name)
    return {"id": name, "object": "adapter.deleted", "deleted": True, "state": ref.state.value,
            "version": ref.public()["version"]}
