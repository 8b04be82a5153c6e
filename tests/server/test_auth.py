"""Keys on every route, the admin key, per-key limits and the audit log, on the gateway app itself.

The app is the real gateway (every family's router, the key guard) over engine and registry
doubles, so each rule is checked route by route without a server; the live server's tests check
the same on the real application.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from fastapi.testclient import TestClient
from starlette.routing import Route
from starlette.websockets import WebSocketDisconnect

from floe.server.config import FloeConfig, KeyLimitsConfig
from floe.server.errors import ModelNotFound, NotFound
from floe.server.gateway.app import create_app
from floe.server.gateway.auth import KeyLimiter
from floe.server.gateway.families import GatewayContext, discover
from floe.server.gateway.state import GatewayState
from floe.server.metrics import GatewayMetrics
from floe.server.registry import AdapterRef, AdapterState
from tests.server.test_gateway import EngineDouble, _Method

API_KEY, OTHER_KEY, ADMIN_KEY = "user-key-1", "user-key-2", "the-admin-key"
OPEN = {"/health", "/ready", "/playground", "/playground/", "/playground/{name}"}


def kid(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Registry:
    """A registry handle double: one adapter, `a`, and registration of anything."""

    def __init__(self) -> None:
        self.ref = AdapterRef(name="a", version="ab" * 32, kind="lora", engine="llm", path="/snap",
                              serves=("chat",), state=AdapterState.READY)

    def __getattr__(self, name):
        return _Method(getattr(self, "_" + name))

    async def _register(self, name, source):
        if "outside" in source:
            from floe.server.errors import PermissionDenied

            raise PermissionDenied("outside the allowed roots", param="source")
        return AdapterRef(name=name, version="cd" * 32, kind="lora", engine="llm", path="/snap2")

    async def _activate(self, model_id):
        return AdapterRef(name=model_id.split("@")[0], version="cd" * 32, kind="lora", engine="llm",
                          path="/snap2", state=AdapterState.READY)

    async def _list(self):
        return [self.ref]

    async def _get(self, name):
        if name != "a":
            raise NotFound(f"adapter {name!r} is not registered", param="name")
        return self.ref

    async def _remove(self, name):
        return await self._get(name)

    async def _acquire(self, model):
        raise ModelNotFound(f"The model `{model}` does not exist.", param="model")

    async def _stats(self):
        return {"ready": 1, "leases": 0}


class Engine(EngineDouble):
    async def _warm(self, model_id):
        return None


def make_app(engine=None, **auth):
    cfg = FloeConfig(auth={"api_keys": [API_KEY, OTHER_KEY], "admin_key": ADMIN_KEY, **auth},
                     http={"ready_timeout_s": 0.2}, runtime={"enabled": False})
    ctx = GatewayContext(config=cfg, base_name="m", metrics=GatewayMetrics(),
                         handles={"engine": engine or Engine(), "registry": Registry()})
    return create_app(GatewayState.build(ctx, discover()))


def requests_of(app):
    """(method, path with parameters filled, route path) of every HTTP route of the app."""
    for route in app.routes:
        if isinstance(route, APIRoute | Route) and not isinstance(route, APIWebSocketRoute):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    yield method, re.sub(r"\{[^}]+\}", "x", route.path), route.path


def test_every_route_needs_a_key_but_the_probes_and_the_playground():
    app = make_app()
    routes = list(requests_of(app))
    assert {path for _, _, path in routes} >= {"/v1/chat/completions", "/metrics", "/openapi.json", "/docs",
                                               "/v1/adapters/{name}"}
    with TestClient(app) as client:
        for method, path, route in routes:
            response = client.request(method, path)
            if route in OPEN:
                assert response.status_code != 401, (method, path)
                continue
            assert response.status_code == 401, (method, path, response.status_code)
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            assert response.json()["error"]["code"] == "invalid_api_key"
            wrong = client.request(method, path, headers=bearer("not-a-key"))
            assert wrong.status_code == 401, (method, path)
        # paths no route answers need a key too (nothing is learnt without one)
        assert client.get("/v1/nothing-here").status_code == 401
        assert client.get("/v1/nothing-here", headers=bearer(API_KEY)).status_code == 404


def test_docs_need_a_key_unless_opened_by_config():
    with TestClient(make_app()) as client:
        assert client.get("/openapi.json").status_code == 401
        assert client.get("/openapi.json", headers=bearer(API_KEY)).json()["info"]["title"] == "floe"
        assert client.get("/docs", headers=bearer(API_KEY)).status_code == 200
    with TestClient(make_app(protect_docs=False)) as client:
        assert client.get("/openapi.json").status_code == 200 and client.get("/redoc").status_code == 200
        assert client.get("/metrics").status_code == 401


def test_probes_can_be_protected_too():
    with TestClient(make_app()) as client:
        assert client.get("/health").status_code == 200
    with TestClient(make_app(protect_probes=True)) as client:
        assert client.get("/health").status_code == 401 and client.get("/ready").status_code == 401
        assert client.get("/health", headers=bearer(API_KEY)).status_code == 200


def test_the_websocket_handshake_needs_a_key():
    with TestClient(make_app()) as client:
        for headers, code in (({}, "invalid_api_key"), (bearer("wrong"), "invalid_api_key"),
                              (bearer(API_KEY), "endpoint_disabled")):  # the key passes; no sessions here
            with client.websocket_connect("/v1/realtime?model=s", headers=headers) as ws:
                event = ws.receive_json()
                assert event["type"] == "error" and event["error"]["code"] == code, event
                with pytest.raises(WebSocketDisconnect) as closed:
                    ws.receive_json()
                if code == "invalid_api_key":
                    assert closed.value.code == 1008
        # the browser's way: the key as a subprotocol
        protocols = ["realtime", f"openai-insecure-api-key.{API_KEY}"]
        with client.websocket_connect("/v1/realtime?model=s", subprotocols=protocols) as ws:
            assert ws.accepted_subprotocol == "realtime"
            assert ws.receive_json()["error"]["code"] == "endpoint_disabled"


def test_adapter_admin_needs_the_admin_key():
    with TestClient(make_app()) as client:
        assert client.get("/v1/adapters").status_code == 401
        refused = client.get("/v1/adapters", headers=bearer(API_KEY))
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
        assert client.get("/v1/adapters", headers=bearer(ADMIN_KEY)).json()["data"][0]["id"] == "a"
        # the admin key is also an API key
        assert client.get("/v1/models", headers=bearer(ADMIN_KEY)).status_code == 200


def test_without_an_admin_key_nobody_administers_adapters():
    cfg = FloeConfig(auth={"api_keys": [API_KEY]}, runtime={"enabled": False})
    ctx = GatewayContext(config=cfg, base_name="m", metrics=GatewayMetrics(),
                         handles={"engine": Engine(), "registry": Registry()})
    with TestClient(create_app(GatewayState.build(ctx, discover()))) as client:
        assert client.get("/v1/adapters", headers=bearer(API_KEY)).status_code == 403
        assert client.get("/v1/models", headers=bearer(API_KEY)).status_code == 200


def test_every_admin_request_is_one_audit_line_naming_the_key_by_its_id(tmp_path):
    log = tmp_path / "audit.jsonl"
    with TestClient(make_app(audit_log=str(log))) as client:
        added = client.post("/v1/adapters", json={"name": "new", "source": "/srv/new"}, headers=bearer(ADMIN_KEY))
        assert added.status_code == 201
        assert client.post("/v1/adapters", json={"name": "x", "source": "/outside"},
                           headers=bearer(ADMIN_KEY)).status_code == 403
        assert client.delete("/v1/adapters/a", headers=bearer(ADMIN_KEY)).status_code == 200
        assert client.delete("/v1/adapters/zz", headers=bearer(ADMIN_KEY)).status_code == 404
        assert client.delete("/v1/adapters/a", headers=bearer(API_KEY)).status_code == 403
        assert client.get("/v1/adapters").status_code == 401
        assert client.get("/v1/models", headers=bearer(API_KEY)).status_code == 200  # not admin: no line
    text = log.read_text()
    for key in (API_KEY, OTHER_KEY, ADMIN_KEY):
        assert key not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(x["action"], x["status"], x["outcome"]) for x in lines] == [
        ("POST /v1/adapters", 201, "ok"), ("POST /v1/adapters", 403, "refused"),
        ("DELETE /v1/adapters/a", 200, "ok"), ("DELETE /v1/adapters/zz", 404, "refused"),
        ("DELETE /v1/adapters/a", 403, "refused"), ("GET /v1/adapters", 401, "refused")]
    add, outside, remove, missing, by_user, anonymous = lines
    assert add["key"] == kid(ADMIN_KEY) and add["role"] == "admin"
    assert add["adapter"] == "new" and add["source"] == "/srv/new" and add["created"] is True
    assert add["content_hash"] == "cd" * 32 and add["version"] == ("cd" * 32)[:12]
    assert outside["adapter"] == "x" and outside["source"] == "/outside" and "content_hash" not in outside
    assert remove["adapter"] == "a" and remove["content_hash"] == "ab" * 32
    assert missing["adapter"] == "zz"
    assert by_user["key"] == kid(API_KEY) and by_user["role"] is None
    assert anonymous["key"] is None


def test_a_key_over_its_concurrency_limit_gets_429_while_other_keys_go_on():
    engine = Engine()
    app = make_app(engine, limits={"max_concurrent": 1})
    body = {"model": "m", "messages": [], "stream": True}
    with TestClient(app) as client:
        with client.stream("POST", "/v1/chat/completions", json=body, headers=bearer(API_KEY)) as first:
            assert first.status_code == 200
            second = client.post("/v1/chat/completions", json=body, headers=bearer(API_KEY))
            assert second.status_code == 429 and second.headers["retry-after"] == "1"
            error = second.json()["error"]
            assert error["type"] == "rate_limit_error" and error["code"] == "concurrency_limit_exceeded"
            assert set(error) == {"message", "type", "param", "code"}
            with client.stream("POST", "/v1/chat/completions", json=body, headers=bearer(OTHER_KEY)) as other:
                assert other.status_code == 200
                client.portal.call(engine.release.set)
                assert [line for line in other.iter_lines() if line][-1] == "data: [DONE]"
            assert [line for line in first.iter_lines() if line][-1] == "data: [DONE]"
        assert client.get("/v1/models", headers=bearer(API_KEY)).status_code == 200  # the slot is free again


def test_a_key_over_its_rate_gets_429_with_retry_after():
    with TestClient(make_app(limits={"requests_per_minute": 2})) as client:
        for _ in range(2):
            assert client.get("/v1/models", headers=bearer(API_KEY)).status_code == 200
        refused = client.get("/v1/models", headers=bearer(API_KEY))
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        assert client.get("/v1/models", headers=bearer(OTHER_KEY)).status_code == 200
        assert client.get("/health").status_code == 200  # open paths carry no key, so no limit


def test_the_rate_refills_and_each_replica_enforces_its_share():
    now = [0.0]
    limiter = KeyLimiter(KeyLimitsConfig(requests_per_minute=60, burst=2), replicas=1, clock=lambda: now[0])
    limiter.acquire("k")
    limiter.acquire("k")
    with pytest.raises(Exception) as refused:
        limiter.acquire("k")
    assert refused.value.headers["Retry-After"] == "1"
    now[0] = 1.0  # one token back after a second at 60 / minute
    limiter.acquire("k")
    assert limiter._usage["k"].active == 3

    shared = KeyLimiter(KeyLimitsConfig(max_concurrent=5, requests_per_minute=60), replicas=2,
                        clock=lambda: now[0])
    for _ in range(3):  # ceil(5 / 2) here
        shared.acquire("k")
    with pytest.raises(Exception, match="in flight"):
        shared.acquire("k")
    shared.release("k")
    shared.acquire("k")
    assert shared._rate == pytest.approx(0.5) and shared._burst == 30
