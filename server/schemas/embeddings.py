"""Wire types of POST /v1/embeddings (OpenAI's shape)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EmbeddingRequest(BaseModel):
    """`input`: a string, strings, or token arrays. When `model` is an `image_encoder` adapter,
    each string is one image as a data URL, `data:image/<type>;base64,<data>` (never an
    http(s) URL: the server fetches nothing); text and token arrays are refused there, and
    image data URLs are refused by text models."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Truncate, then re-normalise (Matryoshka-style).")
    user: str | None = None

    def items(self) -> list[str | list[int]]:
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and all(isinstance(v, int) for v in value):
            return [list(value)]  # type: ignore[arg-type]
        return list(value)  # type: ignore[arg-type]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# -- the family's contract with the kinds that serve it (crosses to the FrozenRuntime) ----------
MINILM = "all-MiniLM-L6-v2"
MINILM_ALIASES = (MINILM, "sentence-transformers/all-MiniLM-L6-v2")


@dataclass(frozen=True)
class EmbedCall:
    inputs: list[str | list[int]]  # image kinds: `data:image/...;base64,...` strings


@dataclass(frozen=True)
class EmbedResult:
    vectors: list[list[float]]
    prompt_tokens: int
    normalized: bool = True
