"""Ray Serve model multiplexing for engine deployments: one LRU of adapters per replica."""

from __future__ import annotations

from typing import Any, TypeVar

from ray import serve

T = TypeVar("T")


def multiplexed(base: type[T], max_loaded: int) -> type[T]:
    """`base` whose `get_adapter(model_id)` is Serve-multiplexed (routed by `multiplexed_model_id`,
    at most `max_loaded` per replica, least recently used evicted) and loads with `base._load`."""

    class Multiplexed(base):  # type: ignore[valid-type, misc]
        @serve.multiplexed(max_num_models_per_replica=max_loaded)
        async def get_adapter(self, model_id: str) -> Any:
            return await self._load(model_id)

    Multiplexed.__name__ = Multiplexed.__qualname__ = base.__name__
    return Multiplexed
