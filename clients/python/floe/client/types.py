"""Typed responses. Unknown fields are kept (`extra="allow"`), so a newer server never breaks
an older client; the fields named here are the ones floe documents."""

from __future__ import annotations

import base64
import math
import re
import struct
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class FloeModel(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


# --- adapters ---------------------------------------------------------------------------------

AdapterState = Literal["registered", "loading", "ready", "draining", "unloaded", "errored"]


class Adapter(FloeModel):
    """One version of a registered adapter (`GET /v1/adapters/{name}`)."""

    id: str = Field(description="The adapter's name, usable as `model` in requests.")
    object: Literal["adapter"] = "adapter"
    version: str = Field(description="Content-hash prefix; `name@version` pins it.")
    model: str = Field(description="Routing id `name@hash12` of this version.")
    kind: str
    state: AdapterState | str
    created: int
    error: str | None = None
    details: dict[str, Any] | None = None


class AdapterList(FloeModel):
    object: Literal["list"] = "list"
    data: list[Adapter]

    def names(self) -> list[str]:
        return [a.id for a in self.data]


class AdapterDeleted(FloeModel):
    id: str
    object: Literal["adapter.deleted"] = "adapter.deleted"
    deleted: bool
    state: str
    version: str


# --- operations -------------------------------------------------------------------------------

class Health(FloeModel):
    status: str


class Readiness(FloeModel):
    """`GET /ready`: 200 with ready=True, or 503 with ready=False and which check failed."""

    ready: bool
    checks: dict[str, Any] = Field(default_factory=dict)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Sample(FloeModel):
    name: str
    labels: dict[str, str]
    value: float


class Metrics(FloeModel):
    """`GET /metrics` in the Prometheus text format, with a small reader for its samples."""

    text: str

    def samples(self, name: str | None = None) -> list[Sample]:
        out = []
        for line in self.text.splitlines():
            match = _SAMPLE.match(line)
            if match is None or line.startswith("#"):
                continue
            if name is not None and match.group(1) != name:
                continue
            labels = {k: v.replace('\\"', '"').replace("\\\\", "\\")
                      for k, v in _LABEL.findall(match.group(2) or "")}
            raw = match.group(3)
            value = math.inf if raw == "+Inf" else -math.inf if raw == "-Inf" else float(raw)
            out.append(Sample(name=match.group(1), labels=labels, value=value))
        return out

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0.0 if none)."""
        return sum(s.value for s in self.samples(name)
                   if all(s.labels.get(k) == v for k, v in labels.items()))


# --- embeddings (OpenAI shape) ---------------------------------------------------------------

class Embedding(FloeModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32.")

    def vector(self) -> list[float]:
        """The embedding as floats, whatever `encoding_format` was asked for."""
        if isinstance(self.embedding, list):
            return self.embedding
        raw = base64.b64decode(self.embedding)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))


class Usage(FloeModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingsResponse(FloeModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage | None = None

    def vectors(self) -> list[list[float]]:
        return [e.vector() for e in sorted(self.data, key=lambda e: e.index)]


# --- forecasts --------------------------------------------------------------------------------

class ForecastChannel(FloeModel):
    index: int
    values: list[float]
    timestamps: list[str] | None = None


class Forecast(FloeModel):
    """`POST /v1/forecasts`: point forecasts, one `ForecastChannel` of `horizon` values per channel."""

    object: str = "forecast"
    model: str
    horizon: int
    lookback: int | None = None
    forecasts: list[ForecastChannel]

    def values(self) -> list[list[float]]:
        return [c.values for c in sorted(self.forecasts, key=lambda c: c.index)]


# --- retrieval --------------------------------------------------------------------------------

class Collection(FloeModel):
    id: str = Field(description="The collection's name.")
    object: str = "retrieval.collection"
    dimension: int
    distance: str | None = None
    model: str | None = Field(None, description="Embedding model for text points and queries.")
    points: int = 0


class CollectionList(FloeModel):
    object: Literal["list"] = "list"
    data: list[Collection]

    def names(self) -> list[str]:
        return [c.id for c in self.data]


class CollectionDeleted(FloeModel):
    id: str
    object: str = "retrieval.collection.deleted"
    deleted: bool


class UpsertResult(FloeModel):
    object: str = "retrieval.upsert"
    collection: str
    upserted: int


class SearchHit(FloeModel):
    id: int | str
    score: float
    payload: dict[str, Any] = Field(default_factory=dict)


class SearchResult(FloeModel):
    object: str = "list"
    collection: str | None = None
    data: list[SearchHit]

    def ids(self) -> list[int | str]:
        return [hit.id for hit in self.data]
