"""FrozenRuntime: the Ray Serve deployment around a RuntimeEngine.

    request -> get_adapter (Serve multiplexing: per-replica LRU, routed by model_id)
            -> validate (400s, per request, before batching)
            -> @serve.batch micro-batch across concurrent requests -> one forward per adapter
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
from floe.server.registry import AdapterRef, snapshots
from floe.server.runtime.engine import LoadedAdapter, RuntimeEngine
from floe.server.runtime.messages import (AttentionCall, EmbedCall, EmbedResult, ForecastCall,
                                          ForecastResult, HiddenStatesCall, RuntimeInfo)

log = logging.getLogger("floe.runtime")


class FrozenRuntime:
    """Base class; `frozen_runtime_class` adds the multiplexed loader with the configured LRU."""

    def __init__(self, config: dict[str, Any], registry: Any = None) -> None:
        import torch

        from floe.server.models import resolve_base_model
        from floe.server.runtime.model import FrozenModel

        self._config = FloeConfig(**config)
        rcfg = self._config.runtime
        torch.set_grad_enabled(False)
        model_dir, _ = resolve_base_model(self._config)
        self.engine = RuntimeEngine(FrozenModel(model_dir, rcfg.dtype), rcfg)
        self._registry = registry
        self._refs: dict[str, AdapterRef] = {}
        self._state_dir = self._config.resolved_state_dir()
        for method in (self._forecast_batch, self._embed_batch):
            method.set_max_batch_size(rcfg.max_batch_size)
            method.set_batch_wait_timeout_s(rcfg.batch_wait_timeout_s)

    # -- request path -----------------------------------------------------------------------
    async def forecast(self, call: ForecastCall) -> ForecastResult:
        adapter = await self._adapter(call.ref)
        series = self.engine.prepare_forecast(call, adapter)
        cfg = adapter.timeseries.cfg
        horizon = call.horizon or cfg.horizon
        forecasts = await self._forecast_batch((adapter, series, horizon))
        return ForecastResult(forecasts=forecasts, seq_len=cfg.seq_len, horizon=horizon)

    async def embed(self, call: EmbedCall) -> EmbedResult:
        adapter = await self._adapter(call.ref) if call.ref is not None else None
        if adapter is not None and adapter.image is not None:  # decode images off the loop
            cfg = await asyncio.to_thread(self.engine.prepare_embed, call, adapter)
            return await self._embed_batch((call, cfg))
        cfg = self.engine.prepare_embed(call, adapter)
        if call.minilm:
            await asyncio.to_thread(self.engine.minilm)  # first use loads it, off the loop
        self.engine.check_embed_inputs(call)
        return await self._embed_batch((call, cfg))

    async def hidden_states(self, call: HiddenStatesCall) -> list[list]:
        states = await asyncio.to_thread(self.engine.hidden_states, call)
        return [s.tolist() for s in states]

    async def attentions(self, call: AttentionCall) -> list:
        return (await asyncio.to_thread(self.engine.attentions, call)).tolist()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _forecast_batch(self, items: list[tuple]) -> list[list[list[float]]]:
        # NOTE: compute in a thread so the loop keeps collecting the next batch meanwhile.
        return await asyncio.to_thread(self.engine.forecast_batch, items)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _embed_batch(self, items: list[tuple]) -> list[EmbedResult]:
        return await asyncio.to_thread(self.engine.embed_batch, items)

    # -- adapters ---------------------------------------------------------------------------
    async def warm(self, model_id: str, ref: AdapterRef | None = None) -> None:
        """Load an adapter now: registration proves this engine accepts it before serving it."""
        if ref is not None:
            self._refs[model_id] = ref
        await self.get_adapter(model_id)

    async def _adapter(self, ref: AdapterRef) -> LoadedAdapter:
        self._refs[ref.model_id] = ref
        return await self.get_adapter(ref.model_id)

    async def get_adapter(self, model_id: str) -> LoadedAdapter:  # replaced by the multiplexed one
        raise NotImplementedError

    async def _load(self, model_id: str) -> LoadedAdapter:
        ref = self._refs.get(model_id)
        if ref is None:
            if self._registry is None:
                raise InvalidRequest(f"unknown adapter version {model_id!r}", param="model")
            ref = await self._registry.version.remote(model_id)
        path = Path(ref.path)
        if not path.is_dir():  # registered on another node: fetch the verified bytes
            files = await self._registry.read_files.remote(model_id)
            path = await asyncio.to_thread(snapshots.materialize, files, ref.version, self._state_dir)
        adapter = await asyncio.to_thread(self.engine.load_adapter, ref, path)
        log.info("loaded %s adapter %s", ref.kind, model_id)
        return adapter

    # -- operations -------------------------------------------------------------------------
    async def ready(self) -> bool:
        return True

    async def info(self) -> RuntimeInfo:
        llm = self.engine.llm
        return RuntimeInfo(fingerprint=llm.fingerprint, num_layers=llm.num_layers,
                           hidden_size=llm.hidden_size,
                           max_batch_size=self._config.runtime.max_batch_size)


def frozen_runtime_class(max_loaded_adapters: int) -> type[FrozenRuntime]:
    """FrozenRuntime with a multiplexed adapter loader holding at most `max_loaded_adapters`."""

    class MultiplexedFrozenRuntime(FrozenRuntime):
        @serve.multiplexed(max_num_models_per_replica=max_loaded_adapters)
        async def get_adapter(self, model_id: str) -> LoadedAdapter:
            return await self._load(model_id)

    MultiplexedFrozenRuntime.__name__ = MultiplexedFrozenRuntime.__qualname__ = "FrozenRuntime"
    return MultiplexedFrozenRuntime
