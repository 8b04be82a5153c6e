"""FastAPI assembly of the gateway: routers, error handlers. No Ray here, so it is testable."""

from __future__ import annotations

from fastapi import FastAPI

from floe.server.gateway.errors import install_error_handlers
from floe.server.gateway.routes import adapters, embeddings, forecasts, openai, ops, retrieval
from floe.server.gateway.state import GatewayState


def create_app(state: GatewayState) -> FastAPI:
    app = FastAPI(title="floe", version="0.1.0",
                  description="Frozen multimodal models as APIs, adapters hot-swapped per request.")
    app.state.floe = state
    install_error_handlers(app)
    for module in (openai, adapters, ops, forecasts, embeddings, retrieval):
        app.include_router(module.router)
    return app
