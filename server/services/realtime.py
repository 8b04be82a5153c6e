"""One realtime websocket: OpenAI Realtime (GA) events <-> a speech session on the SessionRuntime.

The gateway owns the socket, the protocol, the limits (event size, uncommitted audio, session
length) and the conversation's item ids; the session replica owns the audio (resampling, VAD),
the caches and the answer. Every refusal is an `error` event (the socket stays open for a bad
event; it closes after the error for a bad handshake: key, model, a full replica).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from floe.server.config import FloeConfig
from floe.server.errors import FloeError, InvalidRequest, call, unwrap, validation_error
from floe.server.names import split_model
from floe.server.schemas.realtime import (
    CLIENT_EVENTS,
    PCM_RATE,
    UNSUPPORTED,
    AppendEvent,
    ClearEvent,
    CommitEvent,
    ResponseCancelEvent,
    ResponseCreateEvent,
    SessionUpdateEvent,
    TruncateEvent,
    tokens_limit,
)
from floe.server.services.leases import check_serves

log = logging.getLogger("floe.realtime")
FAMILY = "realtime"
BYTES_PER_MS = PCM_RATE * 2 // 1000  # PCM16 mono
MIN_COMMIT_MS = 100


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class SocketClosed(Exception):
    pass


@dataclass
class Answer:
    id: str
    item_id: str
    audio_ms: float = 0.0
    transcript: str = ""
    started: float = field(default_factory=time.monotonic)


class RealtimeService:
    def __init__(self, config: FloeConfig, base_name: str, sessions: Any, registry: Any) -> None:
        self._config, self._base_name = config, base_name
        self._sessions, self._registry = sessions, registry

    async def serve(self, ws: Any, model: str | None, keys: Any) -> None:
        await ws.accept(subprotocol=keys.ws_subprotocol(ws))
        conn = Connection(self, ws)
        try:
            if not model:
                raise InvalidRequest("name a speech model: /v1/realtime?model=<speech adapter>", param="model")
            await conn.run(model)
        except SocketClosed:
            pass
        except FloeError as exc:  # a bad handshake: say why, then close
            await conn.error(exc)
            await conn.close(1008 if exc.status in (401, 403) else 1013 if exc.status in (429, 503) else 1000)
        except Exception as exc:
            err = unwrap(exc)
            if err is None:
                log.exception("realtime session failed")
            await conn.error(err or FloeError(f"the session failed: {exc}"))
            await conn.close(1011)
        finally:
            await conn.end()


class Connection:
    def __init__(self, service: RealtimeService, ws: Any) -> None:
        self.s, self.ws = service, ws
        self.rt = service._config.realtime
        self.handle: Any = None
        self.lease: Any = None
        self.session: dict[str, Any] = {}
        self.turn_detection: dict[str, Any] | None = None
        self.buffered = 0  # uncommitted PCM16 bytes
        self.spoken = False  # the session has had input
        self.user_item: str | None = None
        self.last_item: str | None = None
        self.answer: Answer | None = None
        self.items: dict[str, float] = {}  # assistant item id -> ms of audio sent
        self.closed = False
        self.send_lock = asyncio.Lock()
        self.restart = asyncio.Event()  # the backend session was replaced (session.update's instructions)

    # -- socket ------------------------------------------------------------------------------
    async def send(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        event = {"event_id": _id("event"), **event}
        async with self.send_lock:
            try:
                await self.ws.send_text(json.dumps(event))
            except Exception as exc:  # the client went away
                self.closed = True
                raise SocketClosed() from exc

    async def error(self, exc: FloeError, event_id: str | None = None) -> None:
        try:
            await self.send({"type": "error", "error": {"type": exc.type, "code": exc.code, "message": exc.message,
                                                         "param": exc.param, "event_id": event_id}})
        except SocketClosed:
            pass

    async def close(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            try:
                await self.ws.close(code)
            except Exception:  # already gone
                pass

    # -- life --------------------------------------------------------------------------------
    async def run(self, model: str) -> None:
        from floe.server.sessions.deployment import new_session_id, session_model_id

        adapter = split_model(model, self.s._base_name)
        if adapter is None:
            raise InvalidRequest(f"`{model}` is the base model, which does not speak; name a speech adapter "
                                 "(GET /v1/models lists those of kind `speech`)", param="model")
        self.lease = await call(self.s._registry.acquire.remote(adapter))
        ref = self.lease.ref
        check_serves(ref, FAMILY)
        sid = new_session_id()
        self.handle = self.s._sessions.options(multiplexed_model_id=session_model_id(sid))
        await call(self.handle.open.remote(sid, ref, {}))
        self.session = {
            "type": "realtime", "object": "realtime.session", "id": _id("sess"), "model": model,
            "output_modalities": ["audio"], "instructions": "", "tools": [], "tool_choice": "auto",
            "max_output_tokens": "inf", "tracing": None, "prompt": None,
            "expires_at": int(time.time() + self.rt.max_session_s),
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": PCM_RATE}, "transcription": None,
                                "noise_reduction": None, "turn_detection": None},
                      "output": {"format": {"type": "audio/pcm", "rate": PCM_RATE}, "voice": "griffin-lim",
                                 "speed": 1.0}},
        }
        await self.send({"type": "session.created", "session": self.session})
        pump = asyncio.create_task(self.pump())
        reader = asyncio.create_task(self.read())
        done, pending = await asyncio.wait({pump, reader}, timeout=self.rt.max_session_s,
                                           return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if not done:
            await self.error(InvalidRequest(f"the session reached its limit of {self.rt.max_session_s:g} s "
                                            "(realtime.max_session_s)", code="session_expired"))
            await self.close(1000)

    async def end(self) -> None:
        if self.handle is not None:
            try:
                await asyncio.shield(self.handle.close.remote())
            except Exception:  # the replica is gone: nothing to close
                pass
        if self.lease is not None:
            try:
                await asyncio.shield(self.s._registry.release.remote(self.lease.lease_id))
            except Exception:
                log.exception("could not release adapter lease %s", self.lease.lease_id)
        await self.close(1000)

    # -- client -> session -------------------------------------------------------------------
    async def read(self) -> None:
        from starlette.websockets import WebSocketDisconnect

        while True:
            try:
                text = await self.ws.receive_text()
            except (WebSocketDisconnect, RuntimeError):
                self.closed = True
                return
            event_id = None
            try:
                if len(text) > self.rt.max_event_bytes:
                    raise InvalidRequest(f"the event is {len(text)} bytes; at most {self.rt.max_event_bytes} "
                                         "(realtime.max_event_bytes)", code="event_too_large")
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise InvalidRequest(f"the event is not JSON: {exc}", code="invalid_json") from exc
                if not isinstance(data, dict) or not isinstance(data.get("type"), str):
                    raise InvalidRequest("an event is a JSON object with a string `type`", param="type",
                                         code="invalid_event")
                event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
                await self.handle_event(data)
            except FloeError as exc:
                await self.error(exc, event_id)

    async def handle_event(self, data: dict[str, Any]) -> None:
        kind = data["type"]
        if kind in UNSUPPORTED:
            raise InvalidRequest(UNSUPPORTED[kind], param="type", code="unsupported_event")
        cls = CLIENT_EVENTS.get(kind)
        if cls is None:
            raise InvalidRequest(f"unknown event type {kind!r}", param="type", code="unknown_event")
        try:
            event = cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc.errors()) from exc
        if isinstance(event, AppendEvent):
            await self.append(event)
        elif isinstance(event, CommitEvent):
            if self.buffered < MIN_COMMIT_MS * BYTES_PER_MS:
                raise InvalidRequest(f"buffer too small: {self.buffered // BYTES_PER_MS} ms of audio; a commit needs "
                                     f"at least {MIN_COMMIT_MS} ms", code="input_audio_buffer_commit_empty")
            await self.forward([("commit",)])
            await self.committed()
        elif isinstance(event, ClearEvent):
            await self.forward([("clear",)])
            self.buffered = 0
            await self.send({"type": "input_audio_buffer.cleared"})
        elif isinstance(event, ResponseCreateEvent):
            if self.answer is not None:
                raise InvalidRequest("the conversation already has an active response",
                                     code="conversation_already_has_active_response")
            limit = tokens_limit(event.response.max_output_tokens if event.response else None)
            limit = limit or tokens_limit(self.session.get("max_output_tokens"))
            await self.forward([("respond", limit)])
            await self.respond()
        elif isinstance(event, ResponseCancelEvent):
            if self.answer is None or (event.response_id and event.response_id != self.answer.id):
                raise InvalidRequest("there is no active response to cancel", code="response_cancel_not_active")
            await self.forward([("cancel",)])
        elif isinstance(event, TruncateEvent):
            sent = self.items.get(event.item_id)
            if sent is None:
                raise InvalidRequest(f"no assistant audio item {event.item_id!r}", param="item_id",
                                     code="item_not_found")
            if event.audio_end_ms > sent:
                raise InvalidRequest(f"audio_end_ms {event.audio_end_ms} is past the item's {int(sent)} ms of audio",
                                     param="audio_end_ms", code="invalid_value")
            self.items[event.item_id] = float(event.audio_end_ms)
            await self.send({"type": "conversation.item.truncated", "item_id": event.item_id, "content_index": 0,
                             "audio_end_ms": event.audio_end_ms})
        elif isinstance(event, SessionUpdateEvent):
            await self.update(event)

    async def append(self, event: AppendEvent) -> None:
        try:
            pcm = base64.b64decode(event.audio, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest("`audio` is not base64", param="audio", code="invalid_audio") from exc
        if len(pcm) % 2:
            raise InvalidRequest("`audio` must be 16-bit PCM (an even number of bytes)", param="audio",
                                 code="invalid_audio")
        if self.buffered + len(pcm) > self.rt.max_buffer_bytes:
            raise InvalidRequest(f"the input audio buffer would hold {self.buffered + len(pcm)} bytes; at most "
                                 f"{self.rt.max_buffer_bytes} (realtime.max_buffer_bytes): commit or clear it",
                                 param="audio", code="input_audio_buffer_full")
        self.buffered += len(pcm)
        self.spoken = True
        if pcm:
            await self.forward([("audio", pcm)])

    async def update(self, event: SessionUpdateEvent) -> None:
        upd = event.session
        changes: dict[str, Any] = {}
        if upd.instructions is not None and upd.instructions != self.session["instructions"]:
            if self.spoken:
                raise InvalidRequest("instructions open the conversation; set them before the first audio",
                                     param="session.instructions", code="invalid_value")
            await self.reopen(upd.instructions)
            changes["instructions"] = upd.instructions
        if upd.max_output_tokens is not None:
            changes["max_output_tokens"] = upd.max_output_tokens
        if upd.audio and upd.audio.input and "turn_detection" in upd.audio.input.model_fields_set:
            td = upd.audio.input.turn_detection
            self.turn_detection = td.frontend() if td else None
            await self.forward([("configure", self.turn_detection)])
            self.session["audio"]["input"]["turn_detection"] = td.model_dump() if td else None
        if upd.audio and upd.audio.output and upd.audio.output.voice:
            self.session["audio"]["output"]["voice"] = upd.audio.output.voice
        self.session.update(changes)
        await self.send({"type": "session.updated", "session": self.session})

    async def reopen(self, instructions: str) -> None:
        """A new backend session with other instructions (only before any input)."""
        from floe.server.sessions.deployment import new_session_id, session_model_id

        old = self.handle
        sid = new_session_id()
        handle = self.s._sessions.options(multiplexed_model_id=session_model_id(sid))
        await call(handle.open.remote(sid, self.lease.ref, {"instructions": instructions,
                                                            "turn_detection": self.turn_detection}))
        self.handle = handle
        await old.close.remote()
        self.restart.set()

    async def forward(self, ops: list[tuple[Any, ...]]) -> None:
        await call(self.handle.send.remote(ops))

    # -- session -> client -------------------------------------------------------------------
    async def pump(self) -> None:
        while True:
            handle = self.handle
            stream = handle.options(stream=True).events.remote()
            async for batch in stream:
                for event in batch:
                    await self.on_event(event)
                if self.restart.is_set():
                    break
            if self.restart.is_set() and handle is not self.handle:
                self.restart.clear()
                continue
            if not self.closed:
                await self.error(FloeError("the session ended on its replica (restart or failure)",
                                           code="session_ended"))
                await self.close(1011)
            return

    async def committed(self) -> None:
        item = self.user_item or _id("item")
        self.user_item = None
        self.buffered = 0
        await self.send({"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": self.last_item})
        user = {"id": item, "type": "message", "object": "realtime.item", "role": "user", "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}]}
        await self.send({"type": "conversation.item.added", "previous_item_id": self.last_item, "item": user})
        await self.send({"type": "conversation.item.done", "previous_item_id": self.last_item, "item": user})
        self.last_item = item

    def _item(self, answer: Answer, status: str, transcript: str | None) -> dict[str, Any]:
        return {"id": answer.item_id, "type": "message", "object": "realtime.item", "role": "assistant",
                "status": status, "content": [{"type": "output_audio", "transcript": transcript}]}

    def _response(self, answer: Answer, status: str, output: list[dict[str, Any]], details: Any = None,
                  ) -> dict[str, Any]:
        return {"id": answer.id, "object": "realtime.response", "status": status, "status_details": details,
                "output": output, "conversation_id": self.session["id"], "output_modalities": ["audio"],
                "max_output_tokens": self.session.get("max_output_tokens", "inf"),
                "audio": {"output": self.session["audio"]["output"]}, "usage": None, "metadata": None}

    async def respond(self) -> None:
        answer = Answer(id=_id("resp"), item_id=_id("item"))
        self.answer = answer
        self.items[answer.item_id] = 0.0
        await self.send({"type": "response.created", "response": self._response(answer, "in_progress", [])})
        item = self._item(answer, "in_progress", None)
        where = {"response_id": answer.id, "output_index": 0}
        await self.send({"type": "response.output_item.added", **where, "item": item})
        await self.send({"type": "conversation.item.added", "previous_item_id": self.last_item, "item": item})
        await self.send({"type": "response.content_part.added", **where, "item_id": answer.item_id,
                         "content_index": 0, "part": {"type": "audio", "transcript": ""}})

    async def on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "speech_started":
            self.user_item = _id("item")
            await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": event["audio_start_ms"],
                             "item_id": self.user_item})
        elif kind == "speech_stopped":
            await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": event["audio_end_ms"],
                             "item_id": self.user_item or _id("item")})
        elif kind == "committed":
            await self.committed()
        elif kind == "started":  # the session began an answer (after VAD, or our response.create)
            if self.answer is None:
                await self.respond()
        elif kind == "audio" and self.answer is not None:
            a = self.answer
            where = {"response_id": a.id, "item_id": a.item_id, "output_index": 0, "content_index": 0}
            if event["text"]:
                a.transcript += event["text"]
                await self.send({"type": "response.output_audio_transcript.delta", **where, "delta": event["text"]})
            pcm = event["pcm"]
            step = 200 * BYTES_PER_MS  # deltas of at most 200 ms
            for start in range(0, len(pcm), step):
                await self.send({"type": "response.output_audio.delta", **where,
                                 "delta": base64.b64encode(pcm[start:start + step]).decode()})
            a.audio_ms += len(pcm) / BYTES_PER_MS
            self.items[a.item_id] = a.audio_ms
        elif kind == "done" and self.answer is not None:
            await self.finish(self.answer, event)
        elif kind == "error":
            await self.error(FloeError(event["message"], code=event.get("code")))

    async def finish(self, a: Answer, event: dict[str, Any]) -> None:
        status = event["status"]
        where = {"response_id": a.id, "item_id": a.item_id, "output_index": 0, "content_index": 0}
        await self.send({"type": "response.output_audio.done", **where})
        await self.send({"type": "response.output_audio_transcript.done", **where, "transcript": a.transcript})
        await self.send({"type": "response.content_part.done", **where,
                         "part": {"type": "audio", "transcript": a.transcript}})
        item = self._item(a, "completed" if status == "completed" else "incomplete", a.transcript)
        await self.send({"type": "response.output_item.done", "response_id": a.id, "output_index": 0, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": self.last_item, "item": item})
        if status == "cancelled":
            await self.send({"type": "conversation.item.truncated", "item_id": a.item_id, "content_index": 0,
                             "audio_end_ms": int(a.audio_ms)})
        details = None if status == "completed" else {"type": status, "reason": event.get("reason")}
        self.last_item = a.item_id
        self.answer = None
        await self.send({"type": "response.done", "response": self._response(a, status, [item], details)})
