"""What a gateway replica holds, and the FastAPI dependencies that hand it to routes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from floe.server.config import FloeConfig
from floe.server.drain import GatewayDrain
from floe.server.errors import NotFound
from floe.server.gateway.auth import KeyChecker
from floe.server.gateway.families import Family, GatewayContext
from floe.server.metrics import GatewayMetrics


@dataclass
class GatewayState:
    config: FloeConfig
    base_name: str
    metrics: GatewayMetrics
    keys: KeyChecker
    families: list[Family] = field(default_factory=list)
    services: dict[str, Any] = field(default_factory=dict)  # family name -> service (None: absent)
    started: int = field(default_factory=lambda: int(time.time()))
    drain: GatewayDrain | None = None  # None: no registry to coordinate with (a test app)

    @classmethod
    def build(cls, ctx: GatewayContext, families: list[Family]) -> GatewayState:
        state = cls(config=ctx.config, base_name=ctx.base_name, metrics=ctx.metrics,
                    keys=KeyChecker(ctx.config.auth), families=families,
                    drain=GatewayDrain(registry) if (registry := ctx.handle("registry")) is not None else None)
        for family in families:
            state.services[family.name] = family.build(ctx)
        return state

    def service(self, name: str) -> Any:
        service = self.services.get(name)
        if service is None:
            family = next((f for f in self.families if f.name == name), None)
            raise NotFound(family.unavailable if family else f"no endpoint family {name!r}",
                           code="endpoint_disabled")
        return service


def gateway_state(request: Request) -> GatewayState:
    return request.app.state.floe


def service(name: str) -> Callable[[Request], Any]:
    """A FastAPI dependency: the family's service, or 404 when it is not enabled here."""

    def dependency(request: Request) -> Any:
        return gateway_state(request).service(name)

    return dependency
