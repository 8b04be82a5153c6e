"""The AdapterRegistry as a single-replica Ray Serve deployment (it owns the name table)."""

from __future__ import annotations

from typing import Any

from floe.server.config import FloeConfig
from floe.server.kinds import EngineLimits
from floe.server.registry.registry import AdapterRegistry


class RegistryServer(AdapterRegistry):
    def __init__(self, config: dict[str, Any], base_name: str) -> None:
        cfg = FloeConfig(**config)
        super().__init__(
            roots=cfg.adapters.roots, state_dir=cfg.resolved_state_dir(),
            limits=EngineLimits(max_lora_rank=cfg.engine.max_lora_rank),
            reserved_names=(base_name, "base"), drain_timeout_s=cfg.adapters.drain_timeout_s,
            preload=cfg.adapters.preload,
        )
