"""`Floe`: the synchronous client."""

from __future__ import annotations

import time
from typing import Any, TypeVar

import httpx

from floe.client import _calls as calls
from floe.client import types as t
from floe.client._core import Call, ClientBase, Resource, after_attempt, openai_client
from floe.client.errors import APIConnectionError, APITimeoutError
from floe.client.segmentations import Segmentations

T = TypeVar("T")


class Floe(ClientBase):
    """Client for floe's own endpoints. For chat, completions and models use `openai()`.

        with Floe("http://127.0.0.1:8000", api_key="...", admin_key="...") as floe:
            floe.adapters.add("support-bot", "/srv/adapters/support-bot")
            reply = floe.openai().chat.completions.create(model="support-bot", messages=[...])
    """

    _http_class = httpx.Client

    def _attach(self) -> None:
        self.adapters = Adapters(self)
        self.embeddings = Embeddings(self)
        self.forecasts = Forecasts(self)
        self.segmentations = Segmentations(self)
        self.retrieval = Retrieval(self)

    # --- plumbing --------------------------------------------------------------------------

    def request(self, call: Call[T]) -> T:
        """Send `call`, retrying 429 / 503 / refused connections as `retry_delay` says."""
        attempt = 0
        while True:
            headers = self.options.auth_headers(call.admin)
            try:
                sent = self._http.request(call.method, call.path, json=call.json, headers=headers)
                delay, result = after_attempt(call, self.options, attempt, sent)
            except httpx.TransportError as exc:
                delay, result = after_attempt(call, self.options, attempt, None, exc)
            if delay is None:
                return result  # type: ignore[return-value]
            time.sleep(delay)
            attempt += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Floe:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # --- operations ------------------------------------------------------------------------

    def health(self) -> t.Health:
        return self.request(calls.health())

    def ready(self) -> t.Readiness:
        return self.request(calls.ready())

    def wait_ready(self, timeout_s: float = 300.0, interval_s: float = 0.5) -> t.Readiness:
        """Poll `/ready` until it answers ready; raise `APITimeoutError` after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                state = self.ready()
                if state.ready:
                    return state
            except APIConnectionError:
                pass
            if time.monotonic() >= deadline:
                raise APITimeoutError(f"floe at {self.options.base_url} not ready after {timeout_s}s")
            time.sleep(interval_s)

    def metrics(self) -> t.Metrics:
        return self.request(calls.metrics())

    def openai(self, **kwargs: Any):
        """An `openai.OpenAI` client for floe's OpenAI-shaped routes (chat, completions,
        models), with this client's URL, API key, timeout and retries. Needs `floe-client[openai]`."""
        return openai_client(self.options, "OpenAI", **kwargs)


class Adapters(Resource):
    """`/v1/adapters`: sends the admin key when one is configured, else the API key."""

    def add(self, name: str, source: str) -> t.Adapter:
        """Register `source` (a directory under an allowed root) as `name`, load it, serve it."""
        return self._client.request(calls.adapter_add(name, source))

    def list(self) -> t.AdapterList:
        return self._client.request(calls.adapter_list())

    def get(self, name: str) -> t.Adapter:
        return self._client.request(calls.adapter_get(name))

    def delete(self, name: str) -> t.AdapterDeleted:
        """Stop routing to `name`; returns once its in-flight requests have finished."""
        return self._client.request(calls.adapter_delete(name))


class Embeddings(Resource):
    def create(self, *, model: str, input: str | list[str] | list[int] | list[list[int]],
               encoding_format: str | None = None, dimensions: int | None = None,
               **extra: Any) -> t.EmbeddingsResponse:
        return self._client.request(calls.embeddings(model, input, encoding_format, dimensions, extra))


class Forecasts(Resource):
    def create(self, *, model: str, series: list[float] | list[list[float]], horizon: int | None = None,
               timestamps: list[Any] | None = None, frequency: str | None = None,
               **extra: Any) -> t.Forecast:
        return self._client.request(calls.forecast(model, series, horizon, timestamps, frequency, extra))


class Retrieval(Resource):
    def create_collection(self, name: str, *, model: str | None = None, dimension: int | None = None,
                          distance: str | None = None, **extra: Any) -> t.Collection:
        """A collection of `dimension`-sized vectors, or of texts embedded by `model`."""
        return self._client.request(calls.collection_create(name, model, dimension, distance, extra))

    def get_collection(self, name: str) -> t.Collection:
        return self._client.request(calls.collection_get(name))

    def list_collections(self) -> t.CollectionList:
        return self._client.request(calls.collection_list())

    def delete_collection(self, name: str) -> t.CollectionDeleted:
        return self._client.request(calls.collection_delete(name))

    def upsert(self, collection: str, points: list[dict[str, Any]], **extra: Any) -> t.UpsertResult:
        """Points are `{"id", "text" | "vector", "payload"}`; texts are embedded by the collection's model."""
        return self._client.request(calls.points_upsert(collection, points, extra))

    def search(self, collection: str, *, text: str | None = None, vector: list[float] | None = None,
               top_k: int = 10, filter: dict[str, Any] | None = None, **extra: Any) -> t.SearchResult:
        return self._client.request(calls.search(collection, text, vector, top_k, filter, extra))
