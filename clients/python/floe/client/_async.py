"""`AsyncFloe`: the asyncio client; the same methods as `Floe`, awaited."""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

import httpx

from floe.client import _calls as calls
from floe.client import types as t
from floe.client._core import Call, ClientBase, Resource, after_attempt, openai_client
from floe.client.errors import APIConnectionError, APITimeoutError
from floe.client.segmentations import AsyncSegmentations

T = TypeVar("T")


class AsyncFloe(ClientBase):
    """Client for floe's own endpoints. For chat, completions and models use `openai()`.

        async with AsyncFloe("http://127.0.0.1:8000", api_key="...", admin_key="...") as floe:
            await floe.adapters.add("support-bot", "/srv/adapters/support-bot")
            reply = await floe.openai().chat.completions.create(model="support-bot", messages=[...])
    """

    _http_class = httpx.AsyncClient

    def _attach(self) -> None:
        self.adapters = Adapters(self)
        self.embeddings = Embeddings(self)
        self.forecasts = Forecasts(self)
        self.segmentations = AsyncSegmentations(self)
        self.retrieval = Retrieval(self)

    # --- plumbing --------------------------------------------------------------------------

    async def request(self, call: Call[T]) -> T:
        """Send `call`, retrying 429 / 503 / refused connections as `retry_delay` says."""
        attempt = 0
        while True:
            headers = self.options.auth_headers(call.admin)
            try:
                sent = await self._http.request(call.method, call.path, json=call.json, headers=headers)
                delay, result = after_attempt(call, self.options, attempt, sent)
            except httpx.TransportError as exc:
                delay, result = after_attempt(call, self.options, attempt, None, exc)
            if delay is None:
                return result  # type: ignore[return-value]
            await asyncio.sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncFloe:
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.aclose()

    # --- operations ------------------------------------------------------------------------

    async def health(self) -> t.Health:
        return await self.request(calls.health())

    async def ready(self) -> t.Readiness:
        return await self.request(calls.ready())

    async def wait_ready(self, timeout_s: float = 300.0, interval_s: float = 0.5) -> t.Readiness:
        """Poll `/ready` until it answers ready; raise `APITimeoutError` after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                state = await self.ready()
                if state.ready:
                    return state
            except APIConnectionError:
                pass
            if time.monotonic() >= deadline:
                raise APITimeoutError(f"floe at {self.options.base_url} not ready after {timeout_s}s")
            await asyncio.sleep(interval_s)

    async def metrics(self) -> t.Metrics:
        return await self.request(calls.metrics())

    def openai(self, **kwargs: Any):
        """An `openai.AsyncOpenAI` client for floe's OpenAI-shaped routes (chat, completions,
        models), with this client's URL, API key, timeout and retries. Needs `floe-client[openai]`."""
        return openai_client(self.options, "AsyncOpenAI", **kwargs)


class Adapters(Resource):
    """`/v1/adapters`: sends the admin key when one is configured, else the API key."""

    async def add(self, name: str, source: str) -> t.Adapter:
        """Register `source` (a directory under an allowed root) as `name`, load it, serve it."""
        return await self._client.request(calls.adapter_add(name, source))

    async def list(self) -> t.AdapterList:
        return await self._client.request(calls.adapter_list())

    async def get(self, name: str) -> t.Adapter:
        return await self._client.request(calls.adapter_get(name))

    async def delete(self, name: str) -> t.AdapterDeleted:
        """Stop routing to `name`; returns once its in-flight requests have finished."""
        return await self._client.request(calls.adapter_delete(name))


class Embeddings(Resource):
    async def create(self, *, model: str, input: str | list[str] | list[int] | list[list[int]],
               encoding_format: str | None = None, dimensions: int | None = None,
               **extra: Any) -> t.EmbeddingsResponse:
        return await self._client.request(calls.embeddings(model, input, encoding_format, dimensions, extra))


class Forecasts(Resource):
    async def create(self, *, model: str, series: list[float] | list[list[float]], horizon: int | None = None,
               timestamps: list[Any] | None = None, frequency: str | None = None,
               **extra: Any) -> t.Forecast:
        return await self._client.request(calls.forecast(model, series, horizon, timestamps, frequency, extra))


class Retrieval(Resource):
    async def create_collection(self, name: str, *, model: str | None = None, dimension: int | None = None,
                          distance: str | None = None, **extra: Any) -> t.Collection:
        """A collection of `dimension`-sized vectors, or of texts embedded by `model`."""
        return await self._client.request(calls.collection_create(name, model, dimension, distance, extra))

    async def get_collection(self, name: str) -> t.Collection:
        return await self._client.request(calls.collection_get(name))

    async def list_collections(self) -> t.CollectionList:
        return await self._client.request(calls.collection_list())

    async def delete_collection(self, name: str) -> t.CollectionDeleted:
        return await self._client.request(calls.collection_delete(name))

    async def upsert(self, collection: str, points: list[dict[str, Any]], **extra: Any) -> t.UpsertResult:
        """Points are `{"id", "text" | "vector", "payload"}`; texts are embedded by the collection's model."""
        return await self._client.request(calls.points_upsert(collection, points, extra))

    async def search(self, collection: str, *, text: str | None = None, vector: list[float] | None = None,
               top_k: int = 10, filter: dict[str, Any] | None = None, **extra: Any) -> t.SearchResult:
        return await self._client.request(calls.search(collection, text, vector, top_k, filter, extra))
