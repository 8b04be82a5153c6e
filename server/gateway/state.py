"""What a gateway replica holds, and the FastAPI dependencies that hand it to routes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from floe.server.config import FloeConfig
from floe.server.gateway.auth import KeyChecker
from floe.server.gateway.metrics import GatewayMetrics
from floe.server.services.adapters import AdapterService
from floe.server.services.embeddings import EmbeddingService
from floe.server.services.forecasts import ForecastService
from floe.server.services.health import HealthService
from floe.server.services.inference import InferenceService
from floe.server.services.retrieval import RetrievalService


@dataclass
class RuntimeServices:
    """Services on the FrozenRuntime (and the vector store); absent when it is disabled."""

    forecasts: ForecastService
    embeddings: EmbeddingService
    retrieval: RetrievalService


@dataclass
class GatewayState:
    config: FloeConfig
    inference: InferenceService
    adapters: AdapterService
    health: HealthService
    metrics: GatewayMetrics
    keys: KeyChecker
    started: int = field(default_factory=lambda: int(time.time()))
    runtime: RuntimeServices | None = None


def gateway_state(request: Request) -> GatewayState:
    return request.app.state.floe


def api_auth(request: Request) -> None:
    gateway_state(request).keys.check_api(request)


def admin_auth(request: Request) -> None:
    gateway_state(request).keys.check_admin(request)
