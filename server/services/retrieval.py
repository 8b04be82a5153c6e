"""Retrieval: collections on the vector store; texts embedded by the collection's model."""

from __future__ import annotations

from typing import Any

from floe.server.config import RetrievalConfig
from floe.server.errors import InvalidRequest, call
from floe.server.schemas.retrieval import CollectionCreateRequest, SearchRequest, UpsertRequest
from floe.server.services.embeddings import EmbeddingService


class RetrievalService:
    def __init__(self, store: Any, embeddings: EmbeddingService, config: RetrievalConfig) -> None:
        self._store, self._embeddings, self._config = store, embeddings, config

    async def _store_call(self, method: str, *args: Any) -> Any:
        return await call(self._store.call.remote(method, *args))

    async def create(self, req: CollectionCreateRequest) -> dict[str, Any]:
        dimension = req.dimension
        if req.model is not None:
            probe = await self._embeddings.vectors(req.model, ["dimension probe"])
            native = len(probe.vectors[0])
            if dimension is not None and dimension != native:
                raise InvalidRequest(f"model {req.model!r} embeds in {native} dimensions, not {dimension}",
                                     param="dimension")
            dimension = native
        return await self._store_call("create", req.name, dimension, req.distance, req.model)

    async def collections(self) -> list[dict[str, Any]]:
        return await self._store_call("list")

    async def get(self, name: str) -> dict[str, Any]:
        return await self._store_call("get", name)

    async def delete(self, name: str) -> None:
        await self._store_call("delete", name)

    async def upsert(self, name: str, req: UpsertRequest) -> dict[str, Any]:
        if len(req.points) > self._config.max_points_per_request:
            raise InvalidRequest(f"at most {self._config.max_points_per_request} points per request",
                                 param="points")
        info = await self.get(name)
        texts = [p.text for p in req.points if p.text is not None]
        embedded = iter(await self._embed(info, texts) if texts else [])
        vectors, payloads = [], []
        for point in req.points:
            vectors.append(point.vector if point.vector is not None else next(embedded))
            payload = dict(point.payload or {})
            if point.text is not None and req.store_text:
                payload.setdefault("text", point.text)
            payloads.append(payload)
        count = await self._store_call("upsert", name, [p.id for p in req.points], vectors, payloads)
        return {"object": "retrieval.upsert", "collection": name, "upserted": count}

    async def search(self, name: str, req: SearchRequest) -> dict[str, Any]:
        if req.top_k > self._config.max_top_k:
            raise InvalidRequest(f"top_k is at most {self._config.max_top_k}", param="top_k")
        info = await self.get(name)
        vector = req.vector if req.vector is not None else (await self._embed(info, [req.text]))[0]
        hits = await self._store_call("search", name, vector, req.top_k, req.filter)
        return {"object": "list", "collection": name, "data": hits}

    async def _embed(self, info: dict[str, Any], texts: list[str]) -> list[list[float]]:
        if not info.get("model"):
            raise InvalidRequest(f"collection {info['id']!r} has no embedding model: send vectors",
                                 param="text")
        vectors: list[list[float]] = []
        step = 64
        for i in range(0, len(texts), step):
            vectors += (await self._embeddings.vectors(info["model"], texts[i:i + step])).vectors
        return vectors
