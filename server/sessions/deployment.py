"""SessionRuntime: the Serve deployment whose replicas hold realtime sessions (ARCHITECTURE.md,
"Stateful kinds").

    open(sid, ref, config)    multiplexed_model_id = "session:<sid>": the replica that admits the
                              session (at most `realtime.max_sessions`; a full one refuses with a
                              429) registers the id with Serve's multiplexing, so every later call
                              with that id comes back here (affinity without a second router)
    send(ops)                 socket input (24 kHz PCM16, commit, clear, respond, cancel, configure)
    events()                  a stream of the session's output event lists, until it closes
    close()

One scheduler loop per replica (`schedule -> step -> post-process`): every tick takes the sessions
with work (input, or an answer being spoken), at most `realtime.max_batch_sessions` of them per
forward, and runs the kind's `step` on them in a thread under the model lock: one batched forward
across users at different positions. The frozen base (transformers, as on the FrozenRuntime)
loads on the first session.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import serve

from floe.server.config import FloeConfig
from floe.server.errors import InvalidRequest, NotFound, Overloaded
from floe.server.registry import AdapterRef, snapshots

log = logging.getLogger("floe.sessions")
PREFIX = "session:"


def session_model_id(sid: str) -> str:
    return PREFIX + sid


def new_session_id() -> str:
    return uuid.uuid4().hex


@dataclass(eq=False)
class Live:
    sid: str
    kind: Any
    loaded: Any
    state: Any
    frontend: Any
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    ops: list[Any] = field(default_factory=list)
    closed: bool = False
    opened: float = field(default_factory=time.monotonic)


class SessionRuntime:
    """Base class; `session_runtime_class` adds the multiplexed session lookup."""

    def __init__(self, config: dict[str, Any], registry: Any = None) -> None:
        self._config = FloeConfig(**config)
        self._rt = self._config.realtime
        self._registry = registry
        self._state_dir = self._config.resolved_state_dir()
        self._backbone: Any = None
        self._loading = asyncio.Lock()
        self._adapters: dict[str, Any] = {}
        self._sessions: dict[str, Live] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task | None = None

    # -- the base and the adapters ------------------------------------------------------------
    async def _ensure_backbone(self) -> Any:
        async with self._loading:
            if self._backbone is None:
                self._backbone = await asyncio.to_thread(self._build_backbone)
            return self._backbone

    def _build_backbone(self) -> Any:
        from floe.server.runtime.engine import RuntimeBackbone

        return RuntimeBackbone.from_config(self._config)

    async def _adapter(self, ref: AdapterRef) -> Any:
        from floe.server.kinds import get_kind

        if ref.model_id not in self._adapters:
            path = Path(ref.path)
            if not path.is_dir():  # registered on another node: fetch the verified bytes
                files = await self._registry.read_files.remote(ref.model_id)
                path = await asyncio.to_thread(snapshots.materialize, files, ref.version, self._state_dir)
            kind = get_kind(ref.kind)
            if not hasattr(kind, "step"):
                raise InvalidRequest(f"`{ref.name}` is a {ref.kind} adapter, which holds no sessions",
                                     param="model")
            loaded = await asyncio.to_thread(kind.load, path, self._backbone, ref)
            self._adapters[ref.model_id] = (kind, loaded)
            log.info("loaded %s adapter %s for sessions", ref.kind, ref.model_id)
        return self._adapters[ref.model_id]

    # -- sessions ------------------------------------------------------------------------------
    async def open(self, sid: str, ref: AdapterRef, config: dict[str, Any]) -> dict[str, Any]:
        from floe.adapters.speech import SessionConfig
        from floe.server.sessions.frontend import Frontend, TurnDetection

        live_count = sum(1 for s in self._sessions.values() if not s.closed)
        if live_count >= self._rt.max_sessions:
            raise Overloaded(f"this replica already holds its {self._rt.max_sessions} realtime sessions "
                             "(realtime.max_sessions); retry later", code="session_limit")
        await self._ensure_backbone()
        kind, loaded = await self._adapter(ref)
        td = config.get("turn_detection")
        frontend = await asyncio.to_thread(Frontend, TurnDetection(**td) if td else None)
        state = await asyncio.to_thread(kind.open, self._backbone, loaded, SessionConfig(
            instructions=config.get("instructions") or "", max_output_tokens=config.get("max_output_tokens")))
        self._sessions[sid] = Live(sid, kind, loaded, state, frontend)
        await self.get_session(session_model_id(sid))  # registers the id here: later calls route back
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run())
        self._wake.set()
        return {"session": sid, "limits": {"max_sessions": self._rt.max_sessions}}

    async def get_session(self, model_id: str) -> Live:  # replaced by the multiplexed one
        raise NotImplementedError

    def _lookup(self, model_id: str) -> Live:
        live = self._sessions.get(model_id.removeprefix(PREFIX))
        if live is None or live.closed:
            raise NotFound("no such realtime session on this replica (it ended, or the replica restarted)",
                           code="session_not_found")
        return live

    async def _current(self) -> Live:
        live = await self.get_session(serve.get_multiplexed_model_id())
        if live.closed:
            raise NotFound("this realtime session has ended", code="session_not_found")
        return live

    async def send(self, ops: list[tuple[Any, ...]]) -> None:
        """Socket input, in order: ("audio", pcm16 bytes) | ("commit",) | ("clear",) |
        ("respond", max_output_tokens | None) | ("cancel",) | ("configure", turn_detection | None)."""
        from floe.adapters.speech.session import Cancel, Clear, Commit, Respond
        from floe.server.sessions.frontend import TurnDetection

        live = await self._current()
        for op in ops:
            name = op[0]
            if name == "audio":
                kind_ops, events = live.frontend.push(op[1])
                live.ops.extend(kind_ops)
                if events:
                    live.queue.put_nowait(events)
            elif name == "commit":
                live.ops.extend(live.frontend.flush())
                live.ops.append(Commit())
            elif name == "clear":
                live.frontend.reset()
                live.ops.append(Clear())
            elif name == "respond":
                live.ops.append(Respond(max_output_tokens=op[1]))
            elif name == "cancel":
                live.ops.append(Cancel())
            elif name == "configure":
                live.frontend.configure(TurnDetection(**op[1]) if op[1] else None)
            else:
                raise InvalidRequest(f"unknown session op {name!r}")
        self._wake.set()

    async def events(self):
        """The session's output, one list of events per tick, until it closes."""
        live = await self._current()
        while True:
            batch = await live.queue.get()
            if batch is None:
                return
            yield batch

    async def close(self) -> None:
        live = await self.get_session(serve.get_multiplexed_model_id())
        self._end(live)

    def _end(self, live: Live) -> None:
        if not live.closed:
            live.closed = True
            live.kind.close(live.state)
            live.queue.put_nowait(None)
        self._sessions.pop(live.sid, None)

    # -- the loop ------------------------------------------------------------------------------
    def _ready(self) -> list[Live]:
        return [s for s in self._sessions.values() if not s.closed and (s.ops or s.kind.busy(s.state))]

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while ready := self._ready():
                size = self._rt.max_batch_sessions
                by_kind: dict[str, list[Live]] = {}
                for s in ready:
                    by_kind.setdefault(s.kind.name, []).append(s)
                groups = [same[i:i + size] for same in by_kind.values() for i in range(0, len(same), size)]
                for group in groups:
                    work = [(s, s.ops) for s in group]
                    for s in group:
                        s.ops = []
                    try:
                        outs = await asyncio.to_thread(self._step, work)
                    except Exception as exc:  # a failed step ends its sessions with an error event
                        log.exception("session step failed")
                        for s, _ in work:
                            s.queue.put_nowait([{"type": "error", "code": "session_failed",
                                                 "message": f"the session failed: {exc}"}])
                            self._end(s)
                        continue
                    for (s, _), events in zip(work, outs):
                        if events and not s.closed:
                            s.queue.put_nowait(events)
                await asyncio.sleep(0)  # let socket input in between ticks

    def _step(self, work: list[tuple[Live, list[Any]]]) -> list[list[dict[str, Any]]]:
        llm = self._backbone.llm
        kind = work[0][0].kind  # one kind per group
        with llm.lock:
            return kind.step(self._backbone, [(s.loaded, s.state, ops) for s, ops in work])

    # -- operations ----------------------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        return {"sessions": sum(1 for s in self._sessions.values() if not s.closed),
                "max_sessions": self._rt.max_sessions}

    async def ready(self) -> bool:
        return True


def session_runtime_class(max_sessions: int) -> type[SessionRuntime]:
    """SessionRuntime whose `get_session(model_id)` is Serve-multiplexed: Serve learns which replica
    holds which session id. The LRU is larger than the admission limit, so a live session's id is
    never evicted by ids of sessions that have ended."""

    class Multiplexed(SessionRuntime):
        @serve.multiplexed(max_num_models_per_replica=4 * max_sessions)
        async def get_session(self, model_id: str) -> Live:
            return self._lookup(model_id)

    Multiplexed.__name__ = Multiplexed.__qualname__ = SessionRuntime.__name__
    return Multiplexed
