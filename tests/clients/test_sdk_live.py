"""floe-client against the real server: Ray Serve + vLLM on the built-in tiny model."""

from __future__ import annotations

import asyncio

import pytest

from clients.live import ADMIN_KEY, API_KEY
from floe.client import (
    AsyncFloe,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    Floe,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def floe(floe_live):
    with Floe(floe_live.url, api_key=API_KEY, admin_key=ADMIN_KEY, timeout=300) as client:
        yield client


def test_health_ready_and_metrics(floe, floe_live):
    assert floe.health().status == "ok"
    state = floe.wait_ready(timeout_s=60)
    assert state.ready and state.checks["engine"] and state.checks["registry"]
    reply = floe.openai().chat.completions.create(
        model=floe_live.model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.choices[0].message.content is not None
    metrics = floe.metrics()
    assert metrics.value("floe_requests_total", route="chat", model=floe_live.model, status="200") >= 1
    assert metrics.samples("floe_requests_in_flight")
    assert any(s.name.startswith("vllm:") for s in metrics.samples())


def test_adapter_lifecycle_and_use_through_openai(floe, floe_live):
    source = floe_live.adapter("sdk-bot", seed=11)
    added = floe.adapters.add("sdk-bot", str(source))
    assert (added.id, added.kind, added.state) == ("sdk-bot", "lora", "ready")
    assert added.model == f"sdk-bot@{added.version}" or added.model.startswith(f"sdk-bot@{added.version}")
    assert floe.adapters.add("sdk-bot", str(source)).version == added.version  # same content: no-op
    assert "sdk-bot" in floe.adapters.list().names()
    assert floe.adapters.get("sdk-bot").version == added.version

    oa = floe.openai(max_retries=0)
    assert "sdk-bot" in [m.id for m in oa.models.list().data]
    for model in ("sdk-bot", f"{floe_live.model}:sdk-bot", f"sdk-bot@{added.version}"):
        out = oa.completions.create(model=model, prompt="one two", max_tokens=3, temperature=0)
        assert out.choices[0].text is not None

    deleted = floe.adapters.delete("sdk-bot")
    assert deleted.deleted and deleted.id == "sdk-bot" and deleted.version == added.version
    with pytest.raises(NotFoundError) as info:
        floe.adapters.get("sdk-bot")
    assert info.value.param == "name" and info.value.code == "not_found"


def test_errors_carry_the_openai_body(floe, floe_live):
    with Floe(floe_live.url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(AuthenticationError) as info:
            bad.adapters.list()
    assert info.value.status_code == 401 and info.value.type == "authentication_error"
    assert info.value.code == "invalid_api_key"

    with Floe(floe_live.url, api_key=API_KEY, max_retries=0) as no_admin:  # API key, no admin key
        with pytest.raises(PermissionDeniedError) as info:
            no_admin.adapters.list()
    assert info.value.status_code == 403 and info.value.code == "permission_denied"

    with pytest.raises(PermissionDeniedError):  # outside every allowed root
        floe.adapters.add("escape", "/etc")
    with pytest.raises(BadRequestError) as info:
        floe.adapters.add("", "x")
    assert info.value.param == "name" and info.value.type == "invalid_request_error"
    with pytest.raises(ConflictError) as info:
        floe.adapters.add(floe_live.model, str(floe_live.adapter("dup", seed=12)))
    assert info.value.status_code == 409 and info.value.param == "name"
    with pytest.raises(PayloadTooLargeError) as info:
        floe.adapters.add("big", "x" * (80 * 1024))  # the test server allows 64 KiB
    assert info.value.code == "request_too_large"
    with pytest.raises(NotFoundError):
        floe.adapters.delete("never-registered")


def test_openai_client_is_configured(floe, floe_live):
    oa = floe.openai()
    assert str(oa.base_url).rstrip("/") == f"{floe_live.url}/v1" and oa.api_key == API_KEY
    stream = oa.chat.completions.create(model=floe_live.model, stream=True, max_tokens=4,
                                        messages=[{"role": "user", "content": "count"}])
    chunks = [c for c in stream]
    assert chunks and chunks[-1].choices[0].finish_reason in {"length", "stop"}
    import openai

    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="no-such-model", max_tokens=1,
                                   messages=[{"role": "user", "content": "x"}])


def test_async_client(floe_live):
    async def run():
        async with AsyncFloe(floe_live.url, api_key=API_KEY, admin_key=ADMIN_KEY, timeout=300) as floe:
            assert (await floe.health()).status == "ok"
            assert (await floe.ready()).ready
            source = floe_live.adapter("async-bot", seed=13)
            added, listed = await asyncio.gather(floe.adapters.add("async-bot", str(source)),
                                                 floe.adapters.list())
            assert added.state == "ready"
            reply = await floe.openai().completions.create(model="async-bot", prompt="a", max_tokens=2)
            assert reply.model.startswith("async-bot@")  # the served version
            assert (await floe.adapters.delete("async-bot")).deleted
            with pytest.raises(NotFoundError):
                await floe.adapters.get("async-bot")
            metrics = await floe.metrics()
            return metrics.value("floe_requests_total", route="completions", adapter="async-bot")

    assert asyncio.run(run()) >= 1
