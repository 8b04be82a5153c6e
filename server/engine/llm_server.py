"""LLMServer: the Ray Serve deployment that owns one vLLM engine and its loaded adapters.

One replica holds the frozen base once; every adapter on it shares those weights. Ray Serve
model multiplexing (`multiplexed_model_id` = the adapter version's `model_id`) routes a
request to a replica that already holds its adapter, and keeps an LRU of them per replica.
An adapter leaves the engine only when no request on this replica still uses it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from floe.server.config import FloeConfig
from floe.server.engine.messages import EngineStats, OpenAICall, ResponseHead
from floe.server.engine.protocol import Engine
from floe.server.kinds import InvalidAdapter, LLMKind, get_kind
from floe.server.multiplex import multiplexed
from floe.server.registry import AdapterRef, snapshots

log = logging.getLogger("floe.llm_server")

SYNC_INTERVAL_S = 2.0


def select_engine(config: FloeConfig, model_dir: Path, served_name: str) -> Engine:
    """vLLM, unless a floe.quant manifest says only transformers runs the checkpoint here."""
    from floe.server.models import quant_manifest

    manifest = quant_manifest(model_dir) or {}
    if manifest.get("engine") == "transformers":
        from floe.server.engine.transformers_engine import TransformersEngine

        return TransformersEngine(model_dir, served_name, config.engine.max_model_len)
    from floe.server.engine.vllm_engine import VLLMEngine

    return VLLMEngine(config.engine, model_dir, served_name, manifest.get("load_kwargs"))


@dataclass(frozen=True)
class LLMBackbone:
    """What an llm kind's `load` and hooks get: this replica's engine, the config, the base
    checkpoint (its tokenizer and config, e.g. for the LLM's width)."""

    engine: Engine
    config: FloeConfig
    model_dir: Path
    served_name: str  # the base's name in vLLM: a kind that runs on the base sends requests as it


class LLMResident:
    """An adapter version loaded into this replica's engine, with the kind that owns it."""

    def __init__(self, kind: LLMKind, ref: AdapterRef, value: Any) -> None:
        self.kind, self.ref, self.value = kind, ref, value


class AdapterSlot:
    """A multiplexed adapter on this replica. Serve calls `__del__` when its LRU evicts it."""

    def __init__(self, server: LLMServer, ref: AdapterRef) -> None:
        self.server, self.ref = server, ref
        self._loop = asyncio.get_running_loop()
        self._evicted = False

    def __del__(self) -> None:
        # NOTE: Serve runs a sync __del__ in a worker thread; the unload itself must run on
        # the replica's event loop, and only once (Python calls __del__ again at collection).
        if self._evicted:
            return
        self._evicted = True
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.server.retire, self.ref.model_id)


class LLMServer:
    """Base class; `llm_server_class` adds the multiplexed loader with the configured LRU size."""

    async def __init__(self, config: dict[str, Any], registry: Any, engine: Engine | None = None) -> None:
        from floe.server.models import resolve_base_model

        self._config = FloeConfig(**config)
        self._registry = registry
        model_dir, served_name = resolve_base_model(self._config)
        self._engine = engine or select_engine(self._config, model_dir, served_name)
        await self._engine.start()
        self._backbone = LLMBackbone(self._engine, self._config, model_dir, served_name)
        self._inflight: Counter[str] = Counter()
        self._loaded: dict[str, LLMResident] = {}  # model_id -> adapter present in the engine
        self._retiring: set[str] = set()  # unload once their last request ends
        self._state_dir = self._config.resolved_state_dir()
        self._sync = asyncio.create_task(self._sync_loop())

    # -- request path -------------------------------------------------------------------
    async def openai(self, request: OpenAICall) -> AsyncIterator[ResponseHead | str]:
        model_id = request.adapter_id
        if model_id is None:
            async for item in self._engine.openai(request):
                yield item
            return
        self._inflight[model_id] += 1
        try:
            resident = await self._resident(model_id)
            # The kind's hooks: e.g. media parts -> prompt embeddings, tool-token ids -> tool_calls.
            served = await resident.kind.rewrite_request(resident.value, request)
            frames = resident.kind.rewrite_response(resident.value, served, self._engine.openai(served))
            engine_model = served.body.get("model")
            if engine_model != model_id:  # e.g. a vision adapter runs on the base: name the adapter
                frames = _renamed(frames, str(engine_model), model_id)
            async for item in frames:
                yield item
        finally:
            self._release(model_id)

    async def warm(self, model_id: str) -> None:
        """Load an adapter now (used by registration to validate it in a real engine)."""
        self._inflight[model_id] += 1
        try:
            await self._resident(model_id)
        finally:
            self._release(model_id)

    async def _resident(self, model_id: str) -> LLMResident:
        """Serve's LRU holds the slot; the slot's load put the adapter in the engine."""
        await self.get_adapter(model_id)
        resident = self._loaded.get(model_id)
        if resident is None:  # evicted and retired between two requests: load it again
            resident = await self._ensure_loaded(model_id)
        return resident

    async def get_adapter(self, model_id: str) -> AdapterSlot:  # replaced by the multiplexed one
        raise NotImplementedError

    async def _load(self, model_id: str) -> AdapterSlot:
        ref: AdapterRef = await self._registry.version.remote(model_id)
        slot = AdapterSlot(self, ref)
        await self._ensure_loaded(model_id, ref)
        return slot

    async def _ensure_loaded(self, model_id: str, ref: AdapterRef | None = None) -> LLMResident:
        self._retiring.discard(model_id)
        if model_id in self._loaded:
            return self._loaded[model_id]
        ref = ref or await self._registry.version.remote(model_id)
        kind = get_kind(ref.kind)
        if not isinstance(kind, LLMKind):
            raise InvalidAdapter(f"{ref.kind} adapters do not run on the LLM engine", param="model")
        path = Path(ref.path)
        if not path.is_dir():  # another node registered it: fetch the verified bytes
            files = await self._registry.read_files.remote(model_id)
            path = await asyncio.to_thread(snapshots.materialize, files, ref.version, self._state_dir)
        resident = LLMResident(kind, ref, await kind.load(path, self._backbone, ref))
        self._loaded[model_id] = resident
        return resident

    def retire(self, model_id: str) -> None:
        """Unload when idle: now, or when the last in-flight request on it ends."""
        if model_id not in self._loaded:
            return
        self._retiring.add(model_id)
        if not self._inflight[model_id]:
            asyncio.ensure_future(self._unload(model_id))

    def _release(self, model_id: str) -> None:
        self._inflight[model_id] -= 1
        if self._inflight[model_id] <= 0:
            del self._inflight[model_id]
            if model_id in self._retiring:
                asyncio.ensure_future(self._unload(model_id))

    async def _unload(self, model_id: str) -> None:
        if model_id not in self._retiring or self._inflight[model_id]:
            return
        self._retiring.discard(model_id)
        resident = self._loaded.pop(model_id, None)
        if resident is not None:
            await resident.kind.unload(resident.value, self._backbone, resident.ref)
        log.info("unloaded adapter %s", model_id)

    async def _sync_loop(self) -> None:
        """Retire adapters the registry no longer serves (deleted, or replaced by a new version)."""
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            try:
                live = await self._registry.live_model_ids.remote()
            except Exception:  # registry restarting: try again next round
                log.debug("adapter sync skipped", exc_info=True)
                continue
            for model_id in list(set(self._loaded) - live):
                self.retire(model_id)

    # -- operations ---------------------------------------------------------------------
    async def ready(self) -> bool:
        return True

    async def stats(self) -> EngineStats:
        return await self._engine.stats()

    async def metrics_text(self) -> str:
        return self._engine.metrics_text()

    async def __del__(self) -> None:
        self._sync.cancel()
        await self._engine.shutdown()


async def _renamed(frames: AsyncIterator[ResponseHead | str], engine_model: str,
                   model_id: str) -> AsyncIterator[ResponseHead | str]:
    """The answer's `model` names the adapter version the client asked for (`name@hash12`, as
    for a LoRA), not the engine-side model a kind ran it on."""
    old, new = f'"model":{json.dumps(engine_model)}', f'"model":{json.dumps(model_id)}'
    async for item in frames:
        if isinstance(item, ResponseHead):
            if item.body is not None and item.body.get("model") == engine_model:
                item = dataclasses.replace(item, body={**item.body, "model": model_id})
        elif old in item:
            item = item.replace(old, new, 1)
        yield item


def llm_server_class(max_loaded_adapters: int) -> type[LLMServer]:
    """LLMServer with a multiplexed adapter loader holding at most `max_loaded_adapters`."""
    return multiplexed(LLMServer, max_loaded_adapters)
