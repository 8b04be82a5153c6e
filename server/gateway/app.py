"""FastAPI assembly of the gateway: every family's router, error handlers. No Ray here."""

from __future__ import annotations

from fastapi import FastAPI

from floe.server.gateway.errors import install_error_handlers
from floe.server.gateway.state import GatewayState


def create_app(state: GatewayState) -> FastAPI:
    app = FastAPI(title="floe", version="0.1.0",
                  description="Frozen multimodal models as APIs, adapters hot-swapped per request.")
    app.state.floe = state
    install_error_handlers(app)
    for family in state.families:
        app.include_router(family.router)
    return app
