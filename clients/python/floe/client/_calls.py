"""floe's own endpoints as `Call`s, shared by the sync and async clients."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from floe.client import types as t
from floe.client._core import Call, model_parser


def _clean(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _seg(name: str) -> str:
    return quote(name, safe="@")


# adapters (admin key)

def adapter_add(name: str, source: str) -> Call[t.Adapter]:
    return Call("POST", "/v1/adapters", model_parser(t.Adapter),
                json={"name": name, "source": source}, admin=True)


def adapter_list() -> Call[t.AdapterList]:
    return Call("GET", "/v1/adapters", model_parser(t.AdapterList), admin=True)


def adapter_get(name: str) -> Call[t.Adapter]:
    return Call("GET", f"/v1/adapters/{_seg(name)}", model_parser(t.Adapter), admin=True)


def adapter_delete(name: str) -> Call[t.AdapterDeleted]:
    return Call("DELETE", f"/v1/adapters/{_seg(name)}", model_parser(t.AdapterDeleted), admin=True)


# operations

def health() -> Call[t.Health]:
    return Call("GET", "/health", model_parser(t.Health), retry=False)


def ready() -> Call[t.Readiness]:
    # NOTE: 503 is the answer "not ready", so it is neither raised nor retried here.
    return Call("GET", "/ready", model_parser(t.Readiness), ok_statuses=frozenset({503}), retry=False)


def metrics() -> Call[t.Metrics]:
    return Call("GET", "/metrics", lambda r: t.Metrics(text=r.text))


# embeddings (OpenAI shape)

def embeddings(model: str, input: Any, encoding_format: str | None, dimensions: int | None,
               extra: dict[str, Any]) -> Call[t.EmbeddingsResponse]:
    body = _clean({"model": model, "input": input, "encoding_format": encoding_format,
                   "dimensions": dimensions, **extra})
    return Call("POST", "/v1/embeddings", model_parser(t.EmbeddingsResponse), json=body)


# forecasts

def forecast(model: str, series: Any, horizon: int | None, timestamps: Any, frequency: str | None,
             extra: dict[str, Any]) -> Call[t.Forecast]:
    body = _clean({"model": model, "series": series, "horizon": horizon,
                   "timestamps": timestamps, "frequency": frequency, **extra})
    return Call("POST", "/v1/forecasts", model_parser(t.Forecast), json=body)


# retrieval

_COLLECTIONS = "/v1/retrieval/collections"


def collection_create(name: str, model: str | None, dimension: int | None, distance: str | None,
                      extra: dict[str, Any]) -> Call[t.Collection]:
    body = _clean({"name": name, "model": model, "dimension": dimension, "distance": distance, **extra})
    return Call("POST", _COLLECTIONS, model_parser(t.Collection), json=body)


def collection_get(name: str) -> Call[t.Collection]:
    return Call("GET", f"{_COLLECTIONS}/{_seg(name)}", model_parser(t.Collection))


def collection_list() -> Call[t.CollectionList]:
    return Call("GET", _COLLECTIONS, model_parser(t.CollectionList))


def collection_delete(name: str) -> Call[t.CollectionDeleted]:
    return Call("DELETE", f"{_COLLECTIONS}/{_seg(name)}", model_parser(t.CollectionDeleted))


def points_upsert(collection: str, points: list[dict[str, Any]], extra: dict[str, Any]) -> Call[t.UpsertResult]:
    return Call("POST", f"{_COLLECTIONS}/{_seg(collection)}/points", model_parser(t.UpsertResult),
                json=_clean({"points": points, **extra}))


def search(collection: str, text: str | None, vector: list[float] | None, top_k: int,
           filter: dict[str, Any] | None, extra: dict[str, Any]) -> Call[t.SearchResult]:
    body = _clean({"text": text, "vector": vector, "top_k": top_k, "filter": filter, **extra})
    return Call("POST", f"{_COLLECTIONS}/{_seg(collection)}/search", model_parser(t.SearchResult),
                json=body)
