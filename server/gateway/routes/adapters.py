"""Adapter administration: POST / GET / DELETE /v1/adapters (the admin key: `auth.KeyGuard`).

Each request is one line of the audit log; the routes note the adapter they act on.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from floe.server.errors import InvalidRequest
from floe.server.gateway.audit import note
from floe.server.gateway.body import json_body, read_json_object
from floe.server.gateway.families import Family
from floe.server.gateway.state import service
from floe.server.registry import AdapterRef
from floe.server.services.adapters import AdapterService

router = APIRouter()
family = Family("adapters", router, lambda ctx: AdapterService(
    ctx.handle("engine"), ctx.handle("registry"), ctx.handle("runtime")))


def _noted(request: Request, ref: AdapterRef) -> AdapterRef:
    note(request, adapter=ref.name, version=ref.public()["version"], content_hash=ref.version,
         kind=ref.kind, state=ref.state.value)
    return ref


@router.post("/v1/adapters", openapi_extra=json_body({
    "type": "object", "required": ["name", "source"], "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "source": {"type": "string", "description": "A directory under "
                                                                    "one of the server's adapter roots."}}}))
async def add_adapter(request: Request, adapters: AdapterService = Depends(service("adapters"))):
    body = await read_json_object(request)
    note(request, adapter=body.get("name"), source=body.get("source"))
    unknown = set(body) - {"name", "source"}
    if unknown:
        raise InvalidRequest(f"unknown fields: {sorted(unknown)}", param=sorted(unknown)[0])
    for field in ("name", "source"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise InvalidRequest(f"`{field}` is required and must be a non-empty string", param=field)
    ref, created = await adapters.add(body["name"], body["source"])
    note(request, created=created)
    return JSONResponse(_noted(request, ref).public(), status_code=201 if created else 200)


@router.get("/v1/adapters")
async def list_adapters(adapters: AdapterService = Depends(service("adapters"))):
    return {"object": "list", "data": [ref.public() for ref in await adapters.list()]}


@router.get("/v1/adapters/{name}")
async def get_adapter(name: str, request: Request, adapters: AdapterService = Depends(service("adapters"))):
    note(request, adapter=name)
    return _noted(request, await adapters.get(name)).public()


@router.delete("/v1/adapters/{name}")
async def delete_adapter(name: str, request: Request, adapters: AdapterService = Depends(service("adapters"))):
    note(request, adapter=name)
    ref = _noted(request, await adapters.remove(name))
    return {"id": name, "object": "adapter.deleted", "deleted": True, "state": ref.state.value,
            "version": ref.public()["version"]}
