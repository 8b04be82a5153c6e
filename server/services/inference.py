"""OpenAI-shaped inference: resolve `model`, lease its adapter, run the engine, time the stream."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from floe.server.engine.messages import OpenAICall, OpenAIRoute, ResponseHead, sse_json
from floe.server.errors import InvalidRequest, NotReady, Overloaded, from_status, unwrap
from floe.server.metrics import GatewayMetrics, StreamTimer
from floe.server.names import split_model
from floe.server.services.leases import check_serves

log = logging.getLogger("floe.inference")

READY_PROBE_S = 2.0


MEDIA_PARTS = {"image_url": "images", "input_audio": "audio", "prompt_embeds": "prompt embeddings"}


def check_media(body: dict[str, Any], model: str, accepts: tuple[str, ...]) -> None:
    """400 for a media content part the model's kind does not turn into soft tokens (before the
    engine sees it: a text model would answer with vLLM's 'not a multimodal model')."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in MEDIA_PARTS and kind not in accepts:
                raise InvalidRequest(
                    f"`{model}` does not take {MEDIA_PARTS[kind]}: send `{kind}` parts to a model whose "
                    "kind accepts them (GET /v1/models lists each model's `kind` and `accepts`)",
                    param=f"messages[{i}].content[{j}]", code="unsupported_media")


class InferenceService:
    def __init__(self, base_name: str, engine: Any, registry: Any, metrics: GatewayMetrics,
                 max_in_flight: int) -> None:
        self.base_name = base_name
        self._engine, self._registry, self._metrics = engine, registry, metrics
        self._base_stream = engine.options(stream=True)
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._engine_ready = False
        self._releasing: set[asyncio.Task] = set()

    async def _check_ready(self) -> None:
        """Before the first answer, fail fast with 503 instead of queueing behind a cold start."""
        try:
            self._engine_ready = await asyncio.wait_for(self._engine.ready.remote(), READY_PROBE_S)
        except Exception as exc:
            raise NotReady("the model is still loading; retry shortly",
                           headers={"Retry-After": "5"}) from exc

    async def run(self, route: OpenAIRoute, body: dict[str, Any]) -> dict[str, Any] | AsyncIterator[str]:
        """The whole answer as a dict, or an SSE stream (an async iterator of frames)."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("`model` is required and must be a string", param="model")
        if not self._engine_ready:
            await self._check_ready()
        if self._in_flight >= self._max_in_flight:
            raise Overloaded("too many requests in flight; retry shortly", headers={"Retry-After": "1"})
        adapter = split_model(model, self.base_name)
        self._in_flight += 1
        self._metrics.in_flight.set(self._in_flight)
        lease = None
        try:
            if adapter is not None:
                lease = await self._registry.acquire.remote(adapter)
                check_serves(lease.ref, route)
            check_media(body, model, lease.ref.accepts if lease else ())
            model_id = lease.ref.model_id if lease else None
            request = OpenAICall(
                route=route, body={**body, "model": model_id or self.base_name}, adapter_id=model_id,
                request_id=uuid.uuid4().hex,  # vLLM adds the `chatcmpl-` / `cmpl-` prefix
            )
            handle = (self._engine.options(stream=True, multiplexed_model_id=model_id)
                      if model_id else self._base_stream)
            frames = handle.openai.remote(request)
            head: ResponseHead = await frames.__anext__()
        except Exception as exc:
            err = unwrap(exc)
            await self._finish(route, model, adapter, err.status if err else 500, lease)
            if err is None or err is exc:
                raise
            raise err from exc
        if head.status != 200:
            await self._finish(route, model, adapter, head.status, lease)
            error = (head.body or {}).get("error", {})
            raise from_status(head.status, error.get("message", "engine error"), param=error.get("param"))
        if not head.streaming:
            await self._finish(route, model, adapter, 200, lease)
            return head.body
        # NOTE: the stream owns the lease and the in-flight slot from here on.
        return self._stream(frames, route, model, adapter, lease)

    async def _stream(self, frames: Any, route: str, model: str, adapter: str | None,
                      lease: Any) -> AsyncIterator[str]:
        timer = StreamTimer(self._metrics, route, model)
        status = 200
        try:
            async for frame in frames:
                timer.chunk()
                yield frame
        except (asyncio.CancelledError, GeneratorExit):
            status = 499  # the client went away
            frames.cancel()
            raise
        except Exception as exc:  # the engine failed mid-answer (e.g. its replica died)
            err = unwrap(exc) or NotReady("the model replica stopped while answering; retry shortly",
                                          code="engine_unavailable", headers={"Retry-After": "5"})
            status = err.status
            log.warning("stream for %s ended by an engine error: %r", model, exc)
            # NOTE: the status line is sent already: end the stream with OpenAI's error event,
            # which the official clients raise as an APIError, instead of a cut connection.
            yield sse_json(err.body())
        finally:
            timer.done()
            await self._finish(route, model, adapter, status, lease)

    async def _finish(self, route: str, model: str, adapter: str | None, status: int, lease: Any) -> None:
        self._in_flight -= 1
        self._metrics.in_flight.set(self._in_flight)
        self._metrics.requests.labels(route, model, adapter or "", str(status)).inc()
        if lease is not None:
            # NOTE: a task of its own: a stream's finalizer runs inside a cancelled scope when
            # the client hangs up, and an awaited release there would be cancelled too.
            task = asyncio.get_running_loop().create_task(self._release(lease.lease_id))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _release(self, lease_id: int) -> None:
        try:
            await self._registry.release.remote(lease_id)
        except Exception:
            log.exception("could not release adapter lease %s", lease_id)
