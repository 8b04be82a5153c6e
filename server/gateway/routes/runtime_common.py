"""The FrozenRuntime services a gateway replica holds, or a 404 when the runtime is disabled."""

from __future__ import annotations

from floe.server.errors import NotFound
from floe.server.gateway.state import GatewayState


def runtime_services(state: GatewayState):
    services = state.runtime
    if services is None:
        raise NotFound("this server runs without the FrozenRuntime (runtime.enabled is false)",
                       code="runtime_disabled")
    return services
