"""Gateway behaviour above the engine, with a small deterministic engine double.

The real engine path is covered by the live-server tests; here the double makes overload and
not-ready states reproducible: 429 with Retry-After, 503 while the engine loads, and errors
raised inside replicas (wrapped by Ray) mapped to their status.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from floe.server.config import FloeConfig
from floe.server.engine.messages import ResponseHead
from floe.server.errors import ModelNotFound
from floe.server.gateway.app import create_app
from floe.server.gateway.families import GatewayContext, discover
from floe.server.gateway.state import GatewayState
from floe.server.metrics import GatewayMetrics


class _Method:
    def __init__(self, fn):
        self._fn = fn

    def remote(self, *args):
        return self._fn(*args)


class EngineDouble:
    """Answers like an LLMServer handle: `ready`, and `openai` as a stream of head + frames."""

    def __init__(self) -> None:
        self.ready_state = True
        self.release = asyncio.Event()

    def options(self, **_):
        return self

    def __getattr__(self, name):
        return _Method(getattr(self, "_" + name))

    async def _ready(self):
        if not self.ready_state:
            await asyncio.sleep(10)  # a cold replica does not answer
        return True

    async def _openai(self, call):
        yield ResponseHead(status=200, streaming=True)
        await self.release.wait()
        yield "data: [DONE]\n\n"


class RegistryDouble:
    def __getattr__(self, name):
        return _Method(getattr(self, "_" + name))

    async def _acquire(self, model):
        raise ModelNotFound(f"The model `{model}` does not exist.", param="model")

    async def _stats(self):
        return {"ready": 0, "leases": 0}


def make_client(engine, max_in_flight=1) -> TestClient:
    cfg = FloeConfig(http={"max_in_flight": max_in_flight, "ready_timeout_s": 0.2},
                     runtime={"enabled": False})
    ctx = GatewayContext(config=cfg, base_name="m", metrics=GatewayMetrics(),
                         handles={"engine": engine, "registry": RegistryDouble()})
    return TestClient(create_app(GatewayState.build(ctx, discover())))


def test_not_ready_is_503_with_retry_after():
    engine = EngineDouble()
    engine.ready_state = False
    with make_client(engine) as client:
        response = client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.json()["error"]["code"] == "not_ready"
        assert client.get("/ready").status_code == 503
        assert client.get("/health").status_code == 200


def test_overload_is_429_with_retry_after():
    engine = EngineDouble()
    with make_client(engine, max_in_flight=1) as client:
        body = {"model": "m", "messages": [], "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as first:
            assert first.status_code == 200
            second = client.post("/v1/chat/completions", json=body)
            assert second.status_code == 429
            assert second.headers["retry-after"] == "1"
            assert second.json()["error"]["type"] == "rate_limit_error"
            client.portal.call(engine.release.set)
            assert [line for line in first.iter_lines() if line][-1] == "data: [DONE]"
        # the slot is free again
        client.portal.call(engine.release.set)
        with client.stream("POST", "/v1/chat/completions", json=body) as third:
            assert third.status_code == 200


@pytest.mark.parametrize("body, status", [
    ({"messages": []}, 400),  # no model
    ({"model": 3, "messages": []}, 400),
    ({"model": "unknown-adapter", "messages": []}, 404),
])
def test_request_errors_use_openai_bodies(body, status):
    with make_client(EngineDouble()) as client:
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == status
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_route_is_404_json():
    with make_client(EngineDouble()) as client:
        response = client.get("/v1/nothing-here")
        assert response.status_code == 404 and "error" in response.json()


class DyingEngine(EngineDouble):
    """Streams one frame, then fails as a Ray handle does when the replica dies."""

    async def _openai(self, call):
        yield ResponseHead(status=200, streaming=True)
        yield 'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
        raise RuntimeError("ActorDiedError: the replica died")


def test_an_engine_failing_mid_stream_ends_it_with_an_openai_error_event():
    with make_client(DyingEngine()) as client:
        with client.stream("POST", "/v1/chat/completions",
                           json={"model": "m", "messages": [], "stream": True}) as reply:
            assert reply.status_code == 200
            events = [line for line in reply.iter_lines() if line]
    assert events[0].startswith('data: {"choices"')
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["code"] == "engine_unavailable" and error["type"] == "service_unavailable"
    assert set(error) == {"message", "type", "param", "code"}
