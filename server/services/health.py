"""Liveness, readiness and the metrics scrape that spans the gateway and an engine replica."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from floe.server.metrics import GatewayMetrics

log = logging.getLogger("floe.health")


class HealthService:
    def __init__(self, engine: Any, registry: Any, metrics: GatewayMetrics, timeout_s: float) -> None:
        self._engine, self._registry, self._metrics = engine, registry, metrics
        self._timeout_s = timeout_s

    async def readiness(self) -> dict[str, Any]:
        """Whether an engine replica and the registry answer now."""
        checks: dict[str, Any] = {}
        try:
            checks["engine"] = await asyncio.wait_for(self._engine.ready.remote(), self._timeout_s)
        except Exception as exc:  # any failure means: not ready
            checks["engine"] = False
            log.debug("engine not ready: %r", exc)
        try:
            checks["registry"] = bool(await asyncio.wait_for(self._registry.stats.remote(), self._timeout_s))
        except Exception as exc:
            checks["registry"] = False
            log.debug("registry not ready: %r", exc)
        return {"ready": all(checks.values()), "checks": checks}

    async def scrape(self) -> bytes:
        """Gateway metrics, then one engine replica's (vLLM's own `vllm:` series)."""
        engine_text = ""
        try:
            stats = await asyncio.wait_for(self._registry.stats.remote(), self._timeout_s)
            for state, count in stats.items():
                if state != "leases":
                    self._metrics.adapters.labels(state).set(count)
            engine_stats = await asyncio.wait_for(self._engine.stats.remote(), self._timeout_s)
            self._metrics.adapters_loaded.set(len(engine_stats.adapters_loaded))
            engine_text = await asyncio.wait_for(self._engine.metrics_text.remote(), self._timeout_s)
        except Exception as exc:  # a scrape must not fail because an engine is busy starting
            log.debug("engine metrics unavailable: %r", exc)
        return self._metrics.render() + engine_text.encode()
