"""Adapter administration: register (validate in a real engine, then serve), list, remove."""

from __future__ import annotations

from typing import Any

from floe.server.errors import call, unwrap
from floe.server.kinds import InvalidAdapter
from floe.server.registry import AdapterRef, AdapterState


class AdapterService:
    def __init__(self, engine: Any, registry: Any, runtime: Any = None) -> None:
        self._engine, self._registry = engine, registry
        self._runtime = runtime  # FrozenRuntime: kinds that need more than generation

    async def add(self, name: str, source: str) -> tuple[AdapterRef, bool]:
        """Register `name` from `source`; (ref, created). Re-adding identical content is a no-op."""
        ref: AdapterRef = await call(self._registry.register.remote(name, source))
        if ref.state is AdapterState.READY:
            return ref, False
        try:
            # Loading into one engine replica proves the engine accepts it before anyone uses it.
            if ref.engine == "runtime":
                if self._runtime is None:
                    raise InvalidAdapter(f"{ref.kind} adapters need the FrozenRuntime, which is "
                                         "disabled on this server (runtime.enabled)", param="source")
                await self._runtime.options(multiplexed_model_id=ref.model_id).warm.remote(ref.model_id)
            else:
                await self._engine.options(multiplexed_model_id=ref.model_id).warm.remote(ref.model_id)
        except Exception as exc:
            err = unwrap(exc) or InvalidAdapter(f"the engine could not load adapter {name!r}: {exc}")
            await self._registry.fail.remote(ref.model_id, err.message)
            raise err from exc
        return await self._registry.activate.remote(ref.model_id), True

    async def list(self) -> list[AdapterRef]:
        return await self._registry.list.remote()

    async def get(self, name: str) -> AdapterRef:
        return await call(self._registry.get.remote(name))

    async def remove(self, name: str) -> AdapterRef:
        """Stop routing to `name` now; return once its in-flight requests have finished."""
        return await call(self._registry.remove.remote(name))

