"""Embeddings: resolve the model (base FLAME encoder, an encoder or image_encoder adapter, or
MiniLM), embed. Image data URLs pass through as strings; the FrozenRuntime decodes them."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from floe.server.errors import InvalidRequest, call
from floe.server.names import split_model
from floe.server.runtime.messages import RuntimeCall
from floe.server.schemas.embeddings import (
    MINILM_ALIASES,
    EmbedCall,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    EmbedResult,
)
from floe.server.services.leases import leased

FAMILY = "embeddings"
BUILTIN_KIND = "encoder"  # the kind whose built-in models answer for the base and MiniLM


class EmbeddingService:
    def __init__(self, base_name: str, runtime: Any, registry: Any, max_inputs: int) -> None:
        self._base_name, self._runtime, self._registry = base_name, runtime, registry
        self._max_inputs = max_inputs

    async def vectors(self, model: str, items: list[str | list[int]]) -> EmbedResult:
        """Embeddings of `items` by `model` (also used by retrieval)."""
        if not items:
            raise InvalidRequest("`input` must not be empty", param="input")
        if len(items) > self._max_inputs:
            raise InvalidRequest(f"at most {self._max_inputs} inputs per request", param="input")
        if any(isinstance(x, str) and not x for x in items) or any(isinstance(x, list) and not x for x in items):
            raise InvalidRequest("inputs must not be empty strings or empty token arrays", param="input")
        request = EmbedCall(inputs=items)
        if model in MINILM_ALIASES:
            return await call(self._runtime.run.remote(RuntimeCall(BUILTIN_KIND, request, builtin=model)))
        adapter = split_model(model, self._base_name)
        if adapter is None:
            return await call(self._runtime.run.remote(RuntimeCall(BUILTIN_KIND, request)))
        async with leased(self._registry, adapter, FAMILY) as ref:
            handle = self._runtime.options(multiplexed_model_id=ref.model_id)
            return await call(handle.run.remote(RuntimeCall(ref.kind, request, ref=ref)))

    async def create(self, req: EmbeddingRequest) -> EmbeddingResponse:
        result = await self.vectors(req.model, req.items())
        matrix = np.asarray(result.vectors, dtype=np.float32)
        if req.dimensions is not None:
            if req.dimensions > matrix.shape[1]:
                raise InvalidRequest(f"dimensions {req.dimensions} exceeds the model's {matrix.shape[1]}",
                                     param="dimensions")
            matrix = matrix[:, :req.dimensions]
            if result.normalized:
                matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        data = [Embedding(index=i, embedding=_encode(row, req.encoding_format))
                for i, row in enumerate(matrix)]
        return EmbeddingResponse(data=data, model=req.model,
                                 usage=EmbeddingUsage(prompt_tokens=result.prompt_tokens,
                                                      total_tokens=result.prompt_tokens))


def _encode(row: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # OpenAI: little-endian float32 bytes, base64
        return base64.b64encode(row.astype("<f4").tobytes()).decode()
    return row.tolist()
