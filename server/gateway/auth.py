"""Who may call what: API keys (`Authorization: Bearer ...`), the separate admin key, per-key limits.

`KeyGuard`, an ASGI middleware in front of every route (floe's families and plugins' alike, and
paths no route answers), is the one place that decides: a path is open (the probes, the
playground's static files, the docs when `auth.protect_docs` is off), needs any key (the API),
or needs the admin key (adapter administration, every request of which is also audited). A
caller with a key is then held to that key's limits for the whole request, a stream or a
realtime session included.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from starlette._utils import get_route_path
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from floe.server.config import AuthConfig, KeyLimitsConfig
from floe.server.errors import AuthenticationFailed, FloeError, PermissionDenied, RateLimited, unwrap
from floe.server.gateway.audit import AuditLog
from floe.server.gateway.errors import error_response

# Browsers cannot set headers on a websocket: OpenAI's browser SDK offers the key as this
# subprotocol, beside `realtime`.
WS_KEY_PROTOCOL = "openai-insecure-api-key."
ADMIN_PREFIX = "/v1/adapters"
PROBES = ("/health", "/ready")
PLAYGROUND = "/playground"
CALLER = "floe.caller"  # scope key: the Caller of a request (None: no key needed, none sent)


def key_id(key: bytes) -> str:
    """A key's name in logs and limits: the first 8 hex of its sha256, never the key itself."""
    return hashlib.sha256(key).hexdigest()[:8]


@dataclass(frozen=True)
class Caller:
    key_id: str
    admin: bool


class Access(Enum):
    OPEN = "open"
    API = "api"
    ADMIN = "admin"


class KeyChecker:
    def __init__(self, auth: AuthConfig) -> None:
        keys = [k.get_secret_value().encode() for k in auth.api_keys]
        admin = auth.admin_key.get_secret_value().encode() if auth.admin_key else None
        self._api_required = bool(keys)
        self._admin_set = admin is not None
        self._known = [(k, Caller(key_id(k), admin=False)) for k in keys]
        if admin is not None:
            self._known.append((admin, Caller(key_id(admin), admin=True)))

    @staticmethod
    def _bearer(request: HTTPConnection) -> bytes | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip().encode()
        if request.scope.get("type") == "websocket":
            for protocol in request.scope.get("subprotocols", ()):
                if protocol.startswith(WS_KEY_PROTOCOL) and protocol[len(WS_KEY_PROTOCOL):]:
                    return protocol[len(WS_KEY_PROTOCOL):].encode()
        return None

    @staticmethod
    def ws_subprotocol(websocket: HTTPConnection) -> str | None:
        """The subprotocol a websocket accepts: `realtime` when offered (a browser that sends its key
        as a subprotocol fails any handshake that chooses none)."""
        return "realtime" if "realtime" in websocket.scope.get("subprotocols", ()) else None

    def _caller(self, token: bytes | None) -> Caller | None:
        if token is None:
            return None
        # NOTE: compare against every key, so timing does not reveal which one was close.
        found = None
        for key, caller in self._known:
            if hmac.compare_digest(token, key):
                found = caller
        return found

    def check_api(self, request: HTTPConnection) -> Caller | None:
        """Inference routes (a websocket's handshake too): any API key, or the admin key. Open when
        no API keys are configured (then a known key sent still names its caller, for its limits)."""
        token = self._bearer(request)
        caller = self._caller(token)
        if caller is None and self._api_required:
            raise AuthenticationFailed("Incorrect or missing API key. Send `Authorization: Bearer <key>`.")
        return caller

    def check_admin(self, request: HTTPConnection) -> Caller | None:
        """Adapter administration: the admin key. Open only on a server with no keys at all; with API
        keys but no admin key, nobody administers adapters over HTTP."""
        if not self._admin_set:
            caller = self.check_api(request)
            if self._api_required:
                raise PermissionDenied("This server sets no admin key (auth.admin_key), so no key may manage "
                                       "adapters.")
            return caller
        token = self._bearer(request)
        if token is None:
            raise AuthenticationFailed("The adapter API needs the admin key as a Bearer token.")
        caller = self._caller(token)
        if caller is None:
            raise AuthenticationFailed("Incorrect admin key.")
        if not caller.admin:
            raise PermissionDenied("This key may not manage adapters; use the admin key.")
        return caller

    def presented(self, request: HTTPConnection) -> str | None:
        """The id of the token a refused request sent (for the audit log): a hash, like a key's."""
        token = self._bearer(request)
        return None if token is None else key_id(token)


class AccessPolicy:
    """What each path needs. Decided on the path the router matches (`get_route_path`: Serve's
    route prefix removed), so no spelling of a path reaches a route past its rule."""

    def __init__(self, auth: AuthConfig, docs_paths: tuple[str, ...]) -> None:
        protect_docs = bool(auth.api_keys) if auth.protect_docs is None else auth.protect_docs
        self._open = set(() if protect_docs else docs_paths) | set(() if auth.protect_probes else PROBES)

    def access(self, path: str) -> Access:
        if path in self._open or path == PLAYGROUND or path.startswith(PLAYGROUND + "/"):
            return Access.OPEN
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            return Access.ADMIN
        return Access.API


@dataclass
class _Usage:
    active: int = 0
    tokens: float = 0.0
    stamp: float = 0.0


class KeyLimiter:
    """Each key's requests at once and request rate (a token bucket), in this gateway replica.

    Each of the `replicas` gateway replicas enforces its share of every figure, rounded up, so
    the configured figures hold cluster-wide (within the rounding) while Serve spreads a key's
    requests over the replicas; no replica asks another, so admission costs no extra hop.
    """

    def __init__(self, limits: KeyLimitsConfig, replicas: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        def share(value: int | None) -> int | None:
            return None if value is None else max(1, math.ceil(value / replicas))

        self._concurrent = share(limits.max_concurrent)
        rpm = limits.requests_per_minute
        self._rate = None if rpm is None else rpm / 60.0 / replicas  # tokens per second
        self._burst = share(limits.burst or rpm)
        self._clock = clock
        self._usage: dict[str, _Usage] = {}  # key id -> usage; only configured keys get here

    def acquire(self, caller: str) -> None:
        """Admit one request of `caller`, or raise 429 with `Retry-After`; pair with `release`."""
        usage = self._usage.get(caller)
        if usage is None:
            usage = self._usage[caller] = _Usage(tokens=float(self._burst or 0), stamp=self._clock())
        if self._concurrent is not None and usage.active >= self._concurrent:
            raise RateLimited(f"this key already has {usage.active} requests in flight, its limit here; "
                              "retry when one has finished", code="concurrency_limit_exceeded",
                              headers={"Retry-After": "1"})
        if self._rate is not None and self._burst is not None:
            now = self._clock()
            usage.tokens = min(float(self._burst), usage.tokens + (now - usage.stamp) * self._rate)
            usage.stamp = now
            if usage.tokens < 1.0:
                wait = math.ceil((1.0 - usage.tokens) / self._rate)
                raise RateLimited(f"this key is over its request rate; retry in {wait} s",
                                  headers={"Retry-After": str(wait)})
            usage.tokens -= 1.0
        usage.active += 1

    def release(self, caller: str) -> None:
        self._usage[caller].active -= 1


class KeyGuard:
    """The middleware: access by path, then the caller's limits for the request's whole life."""

    def __init__(self, app: ASGIApp, keys: KeyChecker, policy: AccessPolicy, limiter: KeyLimiter,
                 audit: AuditLog) -> None:
        self.app, self._keys, self._policy, self._limiter, self._audit = app, keys, policy, limiter, audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        access = self._policy.access(get_route_path(scope))
        if access is Access.OPEN:
            await self.app(scope, receive, send)
            return
        if access is Access.ADMIN:
            await self._audited(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        try:
            caller = self._keys.check_api(conn)
        except FloeError as err:
            await self._refuse(scope, receive, send, err)
            return
        await self._limited(caller, scope, receive, send)

    async def _limited(self, caller: Caller | None, scope: Scope, receive: Receive, send: Send) -> None:
        scope[CALLER] = caller
        if caller is None:
            await self.app(scope, receive, send)
            return
        try:
            self._limiter.acquire(caller.key_id)
        except FloeError as err:
            await self._refuse(scope, receive, send, err)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._limiter.release(caller.key_id)

    async def _audited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An admin request, and its one audit line: who, what, which adapter, the outcome."""
        conn = HTTPConnection(scope)
        record = self._audit.begin(scope, f"{scope.get('method', 'WEBSOCKET')} {get_route_path(scope)}")
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            caller = self._keys.check_admin(conn)
        except FloeError as err:
            record.update(key=self._keys.presented(conn), role=None)
            await self._refuse(scope, receive, sending, err)
            self._audit.write(record, status or err.status)
            return
        record.update(key=caller.key_id if caller else None,
                      role=None if caller is None else "admin" if caller.admin else "api")
        try:
            await self._limited(caller, scope, receive, sending)
        except Exception as exc:
            failure = unwrap(exc)
            status = status or (failure.status if failure else 500)
            raise
        finally:
            self._audit.write(record, status or 499)  # no status sent: the client went away

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, err: FloeError) -> None:
        if scope["type"] == "http":
            await error_response(err)(scope, receive, send)
            return
        # A websocket is refused as the realtime API refuses a bad handshake: accept, say why in
        # an `error` event, close (a handshake rejected outright gives a client no reason).
        ws = WebSocket(scope, receive, send)
        await ws.accept(subprotocol=KeyChecker.ws_subprotocol(ws))
        await ws.send_json({"type": "error", "event_id": f"event_{err.code}", "error": {
            "type": err.type, "code": err.code, "message": err.message, "param": err.param, "event_id": None}})
        await ws.close(1013 if err.status == 429 else 1008)


def install_key_guard(app: Any, auth: AuthConfig, keys: KeyChecker, replicas: int) -> None:
    """Put `KeyGuard` in front of `app`'s routes (docs paths read from the app)."""
    docs = tuple(p for p in (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
                 if p)
    app.add_middleware(KeyGuard, keys=keys, policy=AccessPolicy(auth, docs), limiter=KeyLimiter(auth.limits, replicas),
                       audit=AuditLog(auth.audit_log))
