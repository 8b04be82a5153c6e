"""The AdapterRegistry as a single-replica Ray Serve deployment (it owns the name table)."""

from __future__ import annotations

from typing import Any

from floe.server.config import FloeConfig
from floe.server.drain import DrainBoard
from floe.server.kinds import EngineLimits
from floe.server.registry.registry import AdapterRegistry


class RegistryServer(AdapterRegistry):
    """The registry, and the application's drain mark (server/drain.py): its one coordinator."""

    def __init__(self, config: dict[str, Any], base_name: str) -> None:
        self._board = DrainBoard()
        cfg = FloeConfig(**config)
        super().__init__(
            roots=cfg.adapters.roots, state_dir=cfg.resolved_state_dir(),
            limits=EngineLimits(max_lora_rank=cfg.engine.max_lora_rank),
            reserved_names=(base_name, "base"), drain_timeout_s=cfg.adapters.drain_timeout_s,
            preload=cfg.adapters.preload,
        )

    async def drain(self) -> None:
        self._board.start()

    async def gateway_beat(self, gateway: str, in_flight: int) -> bool:
        return self._board.beat(gateway, in_flight)

    async def drain_status(self) -> dict[str, Any]:
        return self._board.status()
