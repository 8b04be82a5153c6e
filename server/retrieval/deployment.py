"""The VectorStore as a single-replica Ray Serve deployment (the embedded store has one owner)."""

from __future__ import annotations

import asyncio
from typing import Any

from floe.server.config import FloeConfig
from floe.server.errors import NotReady
from floe.server.retrieval.store import VectorStore


class VectorStoreServer:
    def __init__(self, config: dict[str, Any]) -> None:
        self._config = FloeConfig(**config)
        self._store: VectorStore | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> VectorStore:
        """Open on first use: a store another process holds fails retrieval only, not the app."""
        async with self._opening:
            if self._store is None:
                cfg = self._config
                rcfg = cfg.retrieval
                try:
                    self._store = await asyncio.to_thread(
                        VectorStore, url=rcfg.url,
                        api_key=rcfg.api_key.get_secret_value() if rcfg.api_key else None,
                        path=rcfg.path or cfg.resolved_cache_dir() / "qdrant")
                except RuntimeError as exc:  # the local store is locked by another process
                    raise NotReady(f"the vector store is unavailable: {exc}",
                                   headers={"Retry-After": "5"}) from exc
            return self._store

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method not in ("create", "get", "list", "delete", "upsert", "search"):
            raise AttributeError(method)
        store = await self._open()
        return await asyncio.to_thread(getattr(store, method), *args, **kwargs)

    async def ready(self) -> bool:
        return True

    def __del__(self) -> None:
        if self._store is not None:
            self._store.close()
