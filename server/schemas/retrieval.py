"""Wire types of /v1/retrieval/collections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CollectionCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    model: str | None = Field(None, description="Embedding model for text points and text queries.")
    dimension: int | None = Field(None, ge=1, description="Default: the model's embedding size.")
    distance: Literal["cosine", "dot", "euclid"] = "cosine"

    @model_validator(mode="after")
    def _needs_size(self) -> CollectionCreateRequest:
        if self.model is None and self.dimension is None:
            raise ValueError("give `model` (texts embedded by it) or `dimension` (raw vectors)")
        return self


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int | str
    text: str | None = None
    vector: list[float] | None = None
    payload: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Point:
        if (self.text is None) == (self.vector is None):
            raise ValueError("each point needs exactly one of `text` or `vector`")
        return self


class UpsertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    points: list[Point] = Field(..., min_length=1)
    store_text: bool = Field(True, description="Keep each point's text in its payload as `text`.")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    vector: list[float] | None = None
    top_k: int = Field(10, ge=1)
    filter: dict[str, Any] | None = Field(None, description="Qdrant filter JSON, or {field: value}.")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.text is None) == (self.vector is None):
            raise ValueError("give exactly one of `text` or `vector`")
        return self
