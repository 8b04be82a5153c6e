"""Reading request bodies within the configured size limit."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from floe.server.errors import InvalidRequest, PayloadTooLarge


async def read_json_object(request: Request, max_bytes: int | None = None) -> dict[str, Any]:
    """The body as a JSON object, within `max_bytes` (default: the gateway's `http.max_body_bytes`)."""
    if max_bytes is None:
        max_bytes = request.app.state.floe.config.http.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def _inlined(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inlined(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inlined(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inlined(v, defs) for v in schema]
    return schema


def json_body(schema: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` declaring a route's JSON body (a wire type, inlined, or a JSON schema).

    Routes read their body themselves (`read_json_object`, within the size limit, then the
    wire type), so FastAPI does not see it; declared, the body is in the OpenAPI document for
    clients and for the fuzzing of tests/server/test_fuzz.py."""
    if not isinstance(schema, dict):
        full = schema.model_json_schema()
        schema = _inlined(full, full.get("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
