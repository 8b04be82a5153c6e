"""The Gateway Ray Serve deployment: holds handles, builds its FastAPI app at replica start."""

from __future__ import annotations

from typing import Any

from ray import serve

from floe.server.config import FloeConfig
from floe.server.gateway.app import create_app
from floe.server.gateway.families import GatewayContext, discover
from floe.server.gateway.state import GatewayState
from floe.server.metrics import GatewayMetrics


@serve.ingress()
class Gateway:
    def __init__(self, config: dict[str, Any], base_name: str, handles: dict[str, Any]) -> None:
        ctx = GatewayContext(config=FloeConfig(**config), base_name=base_name, metrics=GatewayMetrics(),
                             handles={k: v for k, v in handles.items() if v is not None})
        self._state = GatewayState.build(ctx, discover())

    def __serve_build_asgi_app__(self):
        return create_app(self._state)
