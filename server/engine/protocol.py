"""The one narrow seam between the serving layer and an engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from floe.server.engine.messages import EngineStats, OpenAICall, ResponseHead
from floe.server.registry import AdapterRef


class Engine(Protocol):
    """What a replica's engine does. Implementations: `VLLMEngine`; tests use a double."""

    async def start(self) -> None: ...

    def openai(self, request: OpenAICall) -> AsyncIterator[ResponseHead | str]:
        """Yield a ResponseHead, then (when streaming) SSE-framed strings."""
        ...

    async def load_adapter(self, ref: AdapterRef, path: str) -> None: ...

    async def unload_adapter(self, model_id: str) -> None: ...

    async def stats(self) -> EngineStats: ...

    def metrics_text(self) -> str: ...

    async def shutdown(self) -> None: ...
