"""FastAPI assembly of the gateway: every family's router, error handlers, the key guard. No Ray here."""

from __future__ import annotations

from fastapi import FastAPI

from floe.server.drain import DrainGuard
from floe.server.gateway.auth import install_key_guard
from floe.server.gateway.errors import install_error_handlers
from floe.server.gateway.state import GatewayState


def create_app(state: GatewayState) -> FastAPI:
    app = FastAPI(title="floe", version="0.1.0",
                  description="Frozen multimodal models as APIs, adapters hot-swapped per request.")
    app.state.floe = state
    install_error_handlers(app)
    install_key_guard(app, state.config.auth, state.keys, state.config.deployment.gateway_replicas)
    if state.drain is not None:  # outermost: it counts and refuses before any other layer runs
        app.add_middleware(DrainGuard, drain=state.drain)
    for family in state.families:
        app.include_router(family.router)
    return app
