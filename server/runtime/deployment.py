"""FrozenRuntime: the Ray Serve deployment around a RuntimeEngine. One entry point, every kind:

    run(RuntimeCall) -> resident adapter (Serve multiplexing: per-replica LRU, routed by model_id)
                        or the kind's built-in model
                     -> kind.prepare (400s, per request, off the event loop, before batching)
                     -> @serve.batch micro-batch across concurrent requests -> kind.run per kind
                     -> kind.finish -> the family's result type
A request that fails validation never joins a batch, so it cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from ray import serve

from floe.server.config import FloeConfig
from floe.server.errors import InvalidRequest
from floe.server.multiplex import multiplexed
from floe.server.registry import snapshots
from floe.server.runtime.engine import Resident, RuntimeBackbone, RuntimeEngine
from floe.server.runtime.messages import RuntimeCall

log = logging.getLogger("floe.runtime")


class FrozenRuntime:
    """Base class; `frozen_runtime_class` adds the multiplexed loader with the configured LRU."""

    def __init__(self, config: dict[str, Any], registry: Any = None) -> None:
        self._config = FloeConfig(**config)
        rcfg = self._config.runtime
        self._engine: RuntimeEngine | None = None
        self._loading = asyncio.Lock()
        self._registry = registry
        self._state_dir = self._config.resolved_state_dir()
        self._run_batch.set_max_batch_size(rcfg.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(rcfg.batch_wait_timeout_s)

    async def _ensure_engine(self) -> RuntimeEngine:
        """The frozen base loads on first use: a server whose runtime endpoints stay unused never
        holds this second copy of the weights (only an idle replica process)."""
        async with self._loading:
            if self._engine is None:
                self._engine = await asyncio.to_thread(self._build_engine)
            return self._engine

    def _build_engine(self) -> RuntimeEngine:
        # NOTE: kinds run their forwards under torch.no_grad(); grad mode is per thread anyway.
        backbone = RuntimeBackbone.from_config(self._config)
        return RuntimeEngine(backbone.llm, backbone.config)

    @property
    def engine(self) -> RuntimeEngine:
        assert self._engine is not None, "loaded by _ensure_engine on the request path"
        return self._engine

    # -- request path -----------------------------------------------------------------------
    async def run(self, call: RuntimeCall) -> Any:
        await self._ensure_engine()
        resident = await self._resident(call)
        item = await asyncio.to_thread(self.engine.prepare, resident, call.request)
        return await self._run_batch((resident, item))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _run_batch(self, items: list[tuple[Resident, Any]]) -> list[Any]:
        # NOTE: compute in a thread so the loop keeps collecting the next batch meanwhile.
        return await asyncio.to_thread(self.engine.run_batch, items)

    async def _resident(self, call: RuntimeCall) -> Resident:
        if call.ref is None:  # first use loads it, off the loop
            return await asyncio.to_thread(self.engine.builtin, call.kind, call.builtin)
        resident: Resident = await self.get_adapter(call.ref.model_id)
        if resident.kind.name != call.kind:
            raise InvalidRequest(f"`{call.ref.name}` is a {resident.kind.name} adapter, not {call.kind}",
                                 param="model")
        return resident

    # -- adapters ---------------------------------------------------------------------------
    async def warm(self, model_id: str) -> None:
        """Load an adapter now: registration proves this engine accepts it before serving it."""
        await self._ensure_engine()
        await self.get_adapter(model_id)

    async def get_adapter(self, model_id: str) -> Resident:  # replaced by the multiplexed one
        raise NotImplementedError

    async def _load(self, model_id: str) -> Resident:
        if self._registry is None:
            raise InvalidRequest(f"unknown adapter version {model_id!r}", param="model")
        ref = await self._registry.version.remote(model_id)
        path = Path(ref.path)
        if not path.is_dir():  # registered on another node: fetch the verified bytes
            files = await self._registry.read_files.remote(model_id)
            path = await asyncio.to_thread(snapshots.materialize, files, ref.version, self._state_dir)
        resident = await asyncio.to_thread(self.engine.load_adapter, ref, path)
        log.info("loaded %s adapter %s", ref.kind, model_id)
        return resident

    # -- operations -------------------------------------------------------------------------
    async def ready(self) -> bool:
        return True


def frozen_runtime_class(max_loaded_adapters: int) -> type[FrozenRuntime]:
    """FrozenRuntime with a multiplexed adapter loader holding at most `max_loaded_adapters`."""
    return multiplexed(FrozenRuntime, max_loaded_adapters)
