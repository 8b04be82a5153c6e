"""The Gateway Ray Serve deployment: holds handles, builds its FastAPI app at replica start."""

from __future__ import annotations

from typing import Any

from ray import serve

from floe.server.config import FloeConfig
from floe.server.gateway.app import create_app
from floe.server.gateway.auth import KeyChecker
from floe.server.gateway.metrics import GatewayMetrics
from floe.server.gateway.state import GatewayState
from floe.server.services.adapters import AdapterService
from floe.server.services.health import HealthService
from floe.server.services.inference import InferenceService


@serve.ingress()
class Gateway:
    def __init__(self, config: dict[str, Any], base_name: str, engine: Any, registry: Any) -> None:
        cfg = FloeConfig(**config)
        metrics = GatewayMetrics()
        self._state = GatewayState(
            config=cfg,
            inference=InferenceService(base_name, engine, registry, metrics, cfg.http.max_in_flight),
            adapters=AdapterService(engine, registry),
            health=HealthService(engine, registry, metrics, cfg.http.ready_timeout_s),
            metrics=metrics, keys=KeyChecker(cfg.auth),
        )

    def __serve_build_asgi_app__(self):
        return create_app(self._state)
