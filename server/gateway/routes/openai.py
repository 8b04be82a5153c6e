"""OpenAI-compatible routes: chat, completions, responses, models."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from floe.server.errors import ModelNotFound
from floe.server.gateway.body import json_body, read_json_object
from floe.server.gateway.families import Family, GatewayContext
from floe.server.gateway.state import GatewayState, gateway_state
from floe.server.kinds import LLMKind
from floe.server.services.inference import InferenceService

router = APIRouter()


def _build(ctx: GatewayContext) -> InferenceService:
    return InferenceService(ctx.base_name, ctx.handle("engine"), ctx.handle("registry"), ctx.metrics,
                            ctx.config.http.max_in_flight)


family = Family("openai", router, _build)

# The bodies are vLLM's OpenAI protocol (validated by the engine, which the gateway does not
# import): declared here by the fields every request has; any other field passes through.
_MODEL = {"type": "string", "description": "The base model, `<base>:<adapter>`, or an adapter: name[@version]."}
_SAMPLING = {"stream": {"type": "boolean"}, "max_tokens": {"type": "integer"}, "temperature": {"type": "number"}}
CHAT = json_body({"type": "object", "required": ["model", "messages"], "properties": {
    "model": _MODEL, "messages": {"type": "array", "items": {"type": "object", "required": ["role"], "properties": {
        "role": {"type": "string"}, "content": {"type": ["string", "array", "null"]}}}}, **_SAMPLING}})
COMPLETION = json_body({"type": "object", "required": ["model", "prompt"], "properties": {
    "model": _MODEL, "prompt": {"type": ["string", "array"]}, **_SAMPLING}})
RESPONSE = json_body({"type": "object", "required": ["model", "input"], "properties": {
    "model": _MODEL, "input": {"type": ["string", "array"]}, "stream": {"type": "boolean"},
    "max_output_tokens": {"type": "integer"}}})


def _answer(result: dict | AsyncIterator[str]) -> JSONResponse | StreamingResponse:
    if isinstance(result, dict):
        return JSONResponse(result)
    return StreamingResponse(result, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/v1/chat/completions", openapi_extra=CHAT)
async def chat_completions(request: Request, state: GatewayState = Depends(gateway_state)):
    body = await read_json_object(request, state.config.http.max_body_bytes)
    return _answer(await state.service("openai").run("chat", body))


@router.post("/v1/completions", openapi_extra=COMPLETION)
async def completions(request: Request, state: GatewayState = Depends(gateway_state)):
    body = await read_json_object(request, state.config.http.max_body_bytes)
    return _answer(await state.service("openai").run("completions", body))


@router.post("/v1/responses", openapi_extra=RESPONSE)
async def responses(request: Request, state: GatewayState = Depends(gateway_state)):
    # Served by vLLM's Responses layer; floe keeps no responses, so there is no GET / DELETE
    # (a request with `store: true` is refused by the engine with a 400).
    body = await read_json_object(request, state.config.http.max_body_bytes)
    return _answer(await state.service("openai").run("responses", body))


def _card(model_id: str, created: int, **extra) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "floe", **extra}


@router.get("/v1/models")
async def list_models(state: GatewayState = Depends(gateway_state)):
    base = state.base_name
    cards = [_card(base, state.started, root=base, parent=None, kind="base", accepts=[], serves=list(LLMKind.serves))]
    for ref in await state.service("adapters").list():
        cards.append(_card(ref.name, int(ref.created), root=ref.model_id, parent=base, kind=ref.kind,
                           accepts=list(ref.accepts), serves=list(ref.serves)))
    return {"object": "list", "data": cards}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, state: GatewayState = Depends(gateway_state)):
    data = (await list_models(state))["data"]
    for card in data:
        if card["id"] == model:
            return card
    raise ModelNotFound(f"The model `{model}` does not exist.", param="model")

