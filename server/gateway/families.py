"""Endpoint families attach themselves (vLLM's `attach_router` / `init_*_state` pattern).

A family module (one per route module in `server/gateway/routes/`, or a third party's module
in the `floe.families` entry-point group) exposes `family = Family(name, router, build)`.
`build(ctx)` makes the family's service from the deployment handles it needs, or returns None
when one is absent (its routes then answer 404 with the reason). The gateway includes every
family's router; nothing central names a family.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from fastapi import APIRouter

from floe.server.config import FloeConfig
from floe.server.metrics import GatewayMetrics

ENTRY_POINTS = "floe.families"


@dataclass(frozen=True)
class GatewayContext:
    """What a family's `build` gets: config, the base model's name, metrics, Ray handles."""

    config: FloeConfig
    base_name: str
    metrics: GatewayMetrics
    handles: dict[str, Any] = field(default_factory=dict)  # "engine", "registry", "runtime", ...

    def handle(self, name: str) -> Any:
        return self.handles.get(name)


@dataclass(frozen=True)
class Family:
    name: str
    router: APIRouter
    build: Callable[[GatewayContext], Any] = lambda ctx: None
    unavailable: str = "this endpoint is not enabled on this server"  # the 404's message


NO_RUNTIME = "this server runs without the FrozenRuntime (runtime.enabled is false)"


def runtime_family(name: str, router: APIRouter, make: Callable[[GatewayContext, Any], Any]) -> Family:
    """A family served on the FrozenRuntime: `make(ctx, runtime handle)` builds its service; on a
    server without the runtime its routes answer 404 saying so."""
    def build(ctx: GatewayContext) -> Any:
        runtime = ctx.handle("runtime")
        return None if runtime is None else make(ctx, runtime)

    return Family(name, router, build, unavailable=NO_RUNTIME)


def discover() -> list[Family]:
    """floe's own families (the modules of `floe.server.gateway.routes`), then plugins."""
    from floe.server.gateway import routes

    modules = [importlib.import_module(f"{routes.__name__}.{m.name}")
               for m in sorted(pkgutil.iter_modules(routes.__path__), key=lambda m: m.name)]
    modules += [ep.load() for ep in entry_points(group=ENTRY_POINTS)]
    return [m.family for m in modules if isinstance(getattr(m, "family", None), Family)]
