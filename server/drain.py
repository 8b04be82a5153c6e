"""Graceful drain: on SIGINT / SIGTERM, `floe serve` lets in-flight requests finish before it exits.

Ray Serve's shutdown stops its HTTP proxies at once, which cuts every open stream mid-chunk, so
floe drains before it:

1. the driver (`launcher.serve_forever`) marks the application draining at the registry, the
   application's one single-replica deployment (`DrainBoard`);
2. every gateway replica's watcher (`GatewayDrain.watch`) reads the mark every `BEAT_S` and
   reports its requests in flight; once draining, the replica answers new requests 503
   `draining` with `Retry-After` (load balancers see `/ready` fail and move on), and lets the
   running ones finish: a stream to its last byte, a websocket to its close (`DrainGuard`);
3. the driver shuts Serve down once every live gateway has reported, since the mark, that none is
   in flight, or when `deployment.graceful_shutdown_s` has passed.

Rolling updates (KubeRay) need none of this: Serve stops routing to a replica it replaces and
waits `graceful_shutdown_timeout_s` (the same setting) for its requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from floe.server.errors import NotReady

log = logging.getLogger("floe.drain")

BEAT_S = 0.5  # how often a gateway reads the mark and reports its requests in flight
STALE_BEATS = 10  # a gateway silent for this many beats is gone (its replica died or stopped)
OPEN_PATHS = frozenset({"/health", "/metrics"})  # answered while draining (probes, scrapes)


@dataclass
class DrainBoard:
    """The registry replica's side: the mark, and the gateways' latest reports."""

    since: float | None = None
    beats: dict[str, tuple[float, int]] = field(default_factory=dict)  # gateway -> (when, in flight)

    def start(self) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("draining: new requests are refused, running ones may finish")

    def beat(self, gateway: str, in_flight: int) -> bool:
        """A gateway's report; whether the application drains."""
        self.beats[gateway] = (time.monotonic(), in_flight)
        return self.since is not None

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        live = {g: b for g, b in self.beats.items() if now - b[0] < STALE_BEATS * BEAT_S}
        since = self.since
        reported = [n for t, n in live.values() if since is not None and t > since]
        return {"draining": since is not None, "gateways": len(live), "reported": len(reported),
                "in_flight": sum(reported),
                "done": since is not None and len(reported) == len(live) and not any(reported)}


class GatewayDrain:
    """A gateway replica's side: its requests in flight, and whether the application drains."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.id = uuid.uuid4().hex[:12]
        self.in_flight = 0
        self.draining = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None and self.registry is not None:
            self._task = asyncio.get_running_loop().create_task(self.watch())

    async def watch(self) -> None:
        while True:
            try:
                self.draining = bool(await self.registry.gateway_beat.remote(self.id, self.in_flight))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the registry restarting: keep the last answer, try again
                log.debug("drain watcher: %s", exc)
            await asyncio.sleep(BEAT_S)


_REFUSAL = json.dumps(NotReady("the server is shutting down; retry on another replica",
                               code="draining").body()).encode()


class DrainGuard:
    """ASGI middleware: counts requests in flight and, while draining, refuses new ones."""

    def __init__(self, app: Any, drain: GatewayDrain) -> None:
        self.app, self.drain = app, drain

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(scope, receive, send)
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self.drain.draining:
            if scope["type"] == "websocket":
                # NOTE: a close before accept is a 403 handshake refusal to the client.
                return await send({"type": "websocket.close", "code": 1013, "reason": "server draining"})
            return await _refuse(send)
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1

    async def _lifespan(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def started(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.drain.start()
            await send(message)

        await self.app(scope, receive, started)


async def _refuse(send: Any) -> None:
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                            (b"content-length", str(len(_REFUSAL)).encode())]})
    await send({"type": "http.response.body", "body": _REFUSAL})


async def wait_drained(app_name: str, grace_s: float, progress: Any = print) -> bool:
    """The driver's side: mark the application draining, wait until the gateways are idle or
    `grace_s` passes; whether it drained in time."""
    from ray import serve

    registry = serve.get_deployment_handle("AdapterRegistry", app_name=app_name)
    await asyncio.wait_for(registry.drain.remote(), 10)
    deadline = time.monotonic() + grace_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = await asyncio.wait_for(registry.drain_status.remote(), 10)
        if status["done"]:
            return True
        await asyncio.sleep(BEAT_S / 2)
    progress(f"grace period of {grace_s:.0f}s over with {status.get('in_flight', '?')} request(s) in flight")
    return False
