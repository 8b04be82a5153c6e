"""What a gateway replica holds, and the FastAPI dependencies that hand it to routes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from floe.server.config import FloeConfig
from floe.server.gateway.auth import KeyChecker
from floe.server.gateway.metrics import GatewayMetrics
from floe.server.services.adapters import AdapterService
from floe.server.services.health import HealthService
from floe.server.services.inference import InferenceService


@dataclass
class GatewayState:
    config: FloeConfig
    inference: InferenceService
    adapters: AdapterService
    health: HealthService
    metrics: GatewayMetrics
    keys: KeyChecker
    started: int = field(default_factory=lambda: int(time.time()))


def gateway_state(request: Request) -> GatewayState:
    return request.app.state.floe


def api_auth(request: Request) -> None:
    gateway_state(request).keys.check_api(request)


def admin_auth(request: Request) -> None:
    gateway_state(request).keys.check_admin(request)
