"""The VectorStore as a single-replica Ray Serve deployment (the embedded store has one owner)."""

from __future__ import annotations

import asyncio
from typing import Any

from floe.server.config import FloeConfig
from floe.server.retrieval.store import VectorStore


class VectorStoreServer:
    def __init__(self, config: dict[str, Any]) -> None:
        cfg = FloeConfig(**config)
        rcfg = cfg.retrieval
        self._store = VectorStore(
            url=rcfg.url, api_key=rcfg.api_key.get_secret_value() if rcfg.api_key else None,
            path=rcfg.path or cfg.resolved_cache_dir() / "qdrant")

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method not in ("create", "get", "list", "delete", "upsert", "search"):
            raise AttributeError(method)
        return await asyncio.to_thread(getattr(self._store, method), *args, **kwargs)

    async def ready(self) -> bool:
        return True

    def __del__(self) -> None:
        self._store.close()
