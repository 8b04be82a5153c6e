"""The adapter registry: one per application, the source of truth for names and versions.

    register(name, source) -> version in LOADING (validated, snapshotted, hashed)
    activate(model_id)     -> READY; it becomes the name's current version, and the previous
                              version, if any, starts DRAINING
    fail(model_id, why)    -> ERRORED; the previous version stays current
    acquire(name[@v])      -> a Lease on the current READY version (404 otherwise)
    release(lease)         -> when a DRAINING version's last lease goes, it is UNLOADED
    remove(name)           -> DRAINING, waits for the leases, UNLOADED

Identity is the content hash, so a name re-registered with other weights is a new version
with a new engine-side id: no cache entry of the old weights can ever serve it.
The registry knows nothing of engines or HTTP; callers translate.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from floe.server.errors import Conflict, InvalidRequest, ModelNotFound, NotFound
from floe.server.kinds import EngineLimits, inspect_adapter
from floe.server.names import NAME_RULE, split_version, valid_name
from floe.server.registry import snapshots

log = logging.getLogger("floe.registry")

VERSION_CHARS = 12


class AdapterState(str, Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    UNLOADED = "unloaded"
    ERRORED = "errored"


@dataclass
class AdapterRef:
    """One version of one adapter. Crosses process boundaries (gateway, engines)."""

    name: str
    version: str  # content hash (sha256 hex)
    kind: str
    engine: str  # "llm" (LLMServer) or "runtime" (FrozenRuntime): where the kind runs
    path: str  # the immutable snapshot directory
    serves: tuple[str, ...] = ()  # endpoint families that answer with it
    accepts: tuple[str, ...] = ()  # chat content part types its kind consumes (media)
    state: AdapterState = AdapterState.LOADING
    created: float = field(default_factory=time.time)
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        """Engine-side identity: unique per content, readable per name."""
        return f"{self.name}@{self.version[:VERSION_CHARS]}"

    def public(self) -> dict[str, Any]:
        return {"id": self.name, "object": "adapter", "version": self.version[:VERSION_CHARS],
                "model": self.model_id, "kind": self.kind, "state": self.state.value,
                "created": int(self.created), "error": self.error, "details": self.details}


@dataclass(frozen=True)
class Lease:
    lease_id: int
    ref: AdapterRef


class AdapterRegistry:
    def __init__(self, roots: list[Path], state_dir: Path, limits: EngineLimits,
                 reserved_names: tuple[str, ...] = (), drain_timeout_s: float = 300.0,
                 preload: dict[str, Path] | None = None) -> None:
        self._roots = list(roots)
        self._state_dir = state_dir
        self._limits = limits
        self._reserved = set(reserved_names)
        self._drain_timeout_s = drain_timeout_s
        self._versions: dict[str, AdapterRef] = {}  # model_id -> ref, every live version
        self._current: dict[str, str] = {}  # name -> model_id of the version served
        self._leases: dict[int, str] = {}  # lease id -> model_id
        self._counts: dict[str, int] = {}  # model_id -> leases held
        self._drained: dict[str, asyncio.Event] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._restore()
        for name, directory in (preload or {}).items():
            self._preload(name, Path(directory))

    # -- registration -------------------------------------------------------------------
    async def register(self, name: str, source: str) -> AdapterRef:
        self._check_name(name)
        directory = snapshots.resolve_source(source, self._roots)
        # NOTE: hashing and copying can take seconds for big adapters: off the event loop.
        try:
            digest = await asyncio.to_thread(snapshots.content_hash, directory)
        except OSError as exc:  # an unreadable file is the source's fault, not the server's
            raise InvalidRequest(f"source {source!r} cannot be read: {exc}", param="source") from exc
        path = await asyncio.to_thread(snapshots.snapshot, directory, digest, self._state_dir)
        info = await asyncio.to_thread(inspect_adapter, path, self._limits)
        async with self._lock:
            ref = AdapterRef(name=name, version=digest, kind=info.kind, engine=info.engine,
                             serves=info.serves, accepts=info.accepts, path=str(path),
                             state=AdapterState.LOADING,
                             details={**info.details, "base_model": info.base_model,
                                      "declared_version": info.version})
            existing = self._versions.get(ref.model_id)
            if existing is not None and existing.state in (AdapterState.READY, AdapterState.LOADING):
                return existing
            self._versions[ref.model_id] = ref
            return ref

    def _preload(self, name: str, directory: Path) -> None:
        """Serve a directory the server itself provides (a demo adapter): trusted, so not under
        `roots`; it loads into an engine on first use. A name the user registered wins."""
        if name in self._current:
            return
        digest = snapshots.content_hash(directory)
        path = snapshots.snapshot(directory, digest, self._state_dir)
        info = inspect_adapter(path, self._limits)
        ref = AdapterRef(name=name, version=digest, kind=info.kind, engine=info.engine, serves=info.serves,
                         accepts=info.accepts, path=str(path), state=AdapterState.READY,
                         details={**info.details, "base_model": info.base_model, "built_in": True})
        self._versions[ref.model_id] = ref
        self._current[name] = ref.model_id

    async def activate(self, model_id: str) -> AdapterRef:
        async with self._lock:
            ref = self._version(model_id)
            ref.state, ref.error = AdapterState.READY, None
            previous = self._current.get(ref.name)
            self._current[ref.name] = model_id
            if previous is not None and previous != model_id:
                self._start_drain(previous)
            self._persist()
            return ref

    async def fail(self, model_id: str, reason: str) -> AdapterRef:
        async with self._lock:
            ref = self._version(model_id)
            ref.state, ref.error = AdapterState.ERRORED, reason
            del self._versions[model_id]
            return ref

    async def remove(self, name: str) -> AdapterRef:
        async with self._lock:
            model_id = self._current.pop(name, None)
            if model_id is None:
                raise NotFound(f"adapter {name!r} is not registered", param="name")
            self._persist()
            ref = self._versions[model_id]
            event = self._start_drain(model_id)
        try:
            await asyncio.wait_for(event.wait(), timeout=self._drain_timeout_s)
        except TimeoutError:
            log.warning("adapter %s still has %d requests after %.0fs; left draining",
                        model_id, self._counts.get(model_id, 0), self._drain_timeout_s)
        return ref

    # -- request path -------------------------------------------------------------------
    async def acquire(self, model: str) -> Lease:
        """Lease the version a request names: `name` (current) or `name@version`."""
        parsed = split_version(model)
        name, version = parsed if parsed else ("", None)
        model_id = self._current.get(name)
        ref = self._versions.get(model_id) if model_id else None
        if model_id is None or ref is None or ref.state is not AdapterState.READY or (
                version is not None and not ref.version.startswith(version)):
            raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
        lease = Lease(next(self._ids), ref)
        self._leases[lease.lease_id] = model_id
        self._counts[model_id] = self._counts.get(model_id, 0) + 1
        return lease

    async def release(self, lease_id: int) -> None:
        model_id = self._leases.pop(lease_id, None)
        if model_id is None:
            return
        self._counts[model_id] -= 1
        if self._counts[model_id] == 0:
            del self._counts[model_id]
            ref = self._versions.get(model_id)
            if ref is not None and ref.state is AdapterState.DRAINING:
                self._finish_drain(model_id)

    # -- queries ------------------------------------------------------------------------
    async def list(self) -> list[AdapterRef]:
        return [self._versions[m] for m in self._current.values()]

    async def get(self, name: str) -> AdapterRef:
        model_id = self._current.get(name)
        if model_id is None:
            raise NotFound(f"adapter {name!r} is not registered", param="name")
        return self._versions[model_id]

    async def version(self, model_id: str) -> AdapterRef:
        return self._version(model_id)

    async def live_model_ids(self) -> set[str]:
        return {m for m, r in self._versions.items() if r.state is not AdapterState.UNLOADED}

    async def read_files(self, model_id: str) -> dict[str, bytes]:
        """The snapshot's bytes, for engine replicas on nodes that cannot see this disk."""
        return snapshots.read_snapshot(Path(self._version(model_id).path))

    async def stats(self) -> dict[str, int]:
        counts: dict[str, int] = {state.value: 0 for state in AdapterState}
        for ref in self._versions.values():
            counts[ref.state.value] += 1
        counts["leases"] = len(self._leases)
        return counts

    # -- internals ----------------------------------------------------------------------
    def _check_name(self, name: str) -> None:
        if not valid_name(name):
            raise InvalidRequest(f"adapter name {name!r} must be {NAME_RULE}", param="name")
        if name in self._reserved:
            raise Conflict(f"{name!r} is the base model's name", param="name")

    def _version(self, model_id: str) -> AdapterRef:
        ref = self._versions.get(model_id)
        if ref is None:
            raise NotFound(f"adapter version {model_id!r} is not registered", param="model")
        return ref

    def _start_drain(self, model_id: str) -> asyncio.Event:
        event = self._drained.setdefault(model_id, asyncio.Event())
        ref = self._versions.get(model_id)
        if ref is not None:
            ref.state = AdapterState.DRAINING
        if not self._counts.get(model_id):
            self._finish_drain(model_id)
        return event

    def _finish_drain(self, model_id: str) -> None:
        ref = self._versions.pop(model_id, None)
        if ref is not None:
            ref.state = AdapterState.UNLOADED
        event = self._drained.pop(model_id, None)
        if event is not None:
            event.set()

    @property
    def _index_path(self) -> Path:
        return self._state_dir / "registry.json"

    def _persist(self) -> None:
        """Write the name -> version map so registered adapters survive a restart (the server's
        own preloaded ones are provided again by the next start, as that start builds them)."""
        entries = [asdict(ref) for ref in (self._versions[m] for m in self._current.values())
                   if not ref.details.get("built_in")]
        self._state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1, default=str))
        tmp.replace(self._index_path)

    def _restored(self, entry: dict[str, Any]) -> AdapterRef | None:
        """A persisted entry, re-described by its kind (None, logged, when it no longer loads)."""
        try:
            info = inspect_adapter(Path(entry["path"]), self._limits)
        except Exception:
            log.exception("not restoring adapter %s", entry.get("name"))
            return None
        return AdapterRef(**{**entry, "engine": info.engine, "serves": info.serves,
                             "accepts": info.accepts, "state": AdapterState.READY})

    def _restore(self) -> None:
        if not self._index_path.is_file():
            return
        for entry in json.loads(self._index_path.read_text()):
            entry.pop("capability", None)  # written by floe 0.1; the kind says where it runs
            ref = self._restored(entry)
            if ref is None:
                continue
            if Path(ref.path).is_dir() and ref.name not in self._reserved:
                self._versions[ref.model_id] = ref
                self._current[ref.name] = ref.model_id
        log.info("restored %d adapters from %s", len(self._current), self._index_path)
