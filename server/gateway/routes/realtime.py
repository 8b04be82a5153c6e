"""WebSocket /v1/realtime?model=<speech adapter>: OpenAI Realtime (GA events) on speech sessions.

The official client works unmodified: `openai.AsyncOpenAI(base_url=".../v1").realtime.connect(
model=...)`. The API key comes on the handshake (`Authorization: Bearer ...`); a bad key, an
unknown model or a full replica is an `error` event, then the socket closes.
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from floe.server.errors import FloeError
from floe.server.gateway.families import Family, GatewayContext
from floe.server.gateway.state import GatewayState
from floe.server.services.realtime import RealtimeService

router = APIRouter()


def _build(ctx: GatewayContext) -> RealtimeService | None:
    if ctx.handle("sessions") is None:
        return None
    return RealtimeService(ctx.config, ctx.base_name, ctx.handle("sessions"), ctx.handle("registry"))


UNAVAILABLE = "this server runs without the SessionRuntime (runtime.enabled or realtime.enabled is false)"
family = Family("realtime", router, _build, unavailable=UNAVAILABLE)


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    state: GatewayState = websocket.app.state.floe
    model = websocket.query_params.get("model")
    try:
        service: RealtimeService = state.service("realtime")
    except FloeError as exc:
        await websocket.accept(subprotocol=state.keys.ws_subprotocol(websocket))
        await websocket.send_json({"type": "error", "event_id": "event_unavailable", "error": {
            "type": exc.type, "code": exc.code, "message": exc.message, "param": None, "event_id": None}})
        await websocket.close(1000)
        return
    await service.serve(websocket, model, state.keys)
