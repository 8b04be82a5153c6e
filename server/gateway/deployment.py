"""The Gateway Ray Serve deployment: holds handles, builds its FastAPI app at replica start."""

from __future__ import annotations

from typing import Any

from ray import serve

from floe.server.config import FloeConfig
from floe.server.gateway.app import create_app
from floe.server.gateway.auth import KeyChecker
from floe.server.gateway.metrics import GatewayMetrics
from floe.server.gateway.state import GatewayState, RuntimeServices
from floe.server.services.adapters import AdapterService
from floe.server.services.embeddings import EmbeddingService
from floe.server.services.forecasts import ForecastService
from floe.server.services.health import HealthService
from floe.server.services.inference import InferenceService
from floe.server.services.retrieval import RetrievalService


@serve.ingress()
class Gateway:
    def __init__(self, config: dict[str, Any], base_name: str, engine: Any, registry: Any,
                 runtime: Any = None, store: Any = None) -> None:
        cfg = FloeConfig(**config)
        metrics = GatewayMetrics()
        self._state = GatewayState(
            config=cfg,
            inference=InferenceService(base_name, engine, registry, metrics, cfg.http.max_in_flight),
            adapters=AdapterService(engine, registry, runtime),
            health=HealthService(engine, registry, metrics, cfg.http.ready_timeout_s),
            metrics=metrics, keys=KeyChecker(cfg.auth),
        )
        if runtime is not None:
            embeddings = EmbeddingService(base_name, runtime, registry, cfg.runtime.max_embedding_inputs)
            self._state.runtime = RuntimeServices(
                forecasts=ForecastService(base_name, runtime, registry), embeddings=embeddings,
                retrieval=RetrievalService(store, embeddings, cfg.retrieval))

    def __serve_build_asgi_app__(self):
        return create_app(self._state)
