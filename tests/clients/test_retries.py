"""Retries, backoff, Retry-After and timeouts of the real client against a real HTTP server."""

from __future__ import annotations

import asyncio
import email.utils
import time

import pytest

from floe.client import (
    APIConnectionError,
    APITimeoutError,
    AsyncFloe,
    Floe,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
)
from tests.clients.flaky_server import FlakyServer
from tests.serving import free_port

ADAPTERS = {"object": "list", "data": [
    {"id": "a", "object": "adapter", "version": "0123456789ab", "model": "a@0123456789ab",
     "kind": "lora", "state": "ready", "created": 1, "error": None, "details": {}}]}


@pytest.fixture(scope="module")
def flaky():
    with FlakyServer(free_port()) as server:
        yield server


def client(flaky, **kwargs) -> Floe:
    return Floe(flaky.url, api_key="k", admin_key="admin", **kwargs)


def test_retry_after_is_honoured_on_503_then_429(flaky):
    flaky.play({"status": 503, "retry_after": "1"}, {"status": 429, "retry_after": "1"},
               {"json": ADAPTERS})
    with client(flaky, backoff_base_s=0.01) as floe:
        listed = floe.adapters.list()
    assert listed.names() == ["a"] and listed.data[0].state == "ready"
    assert len(flaky.times) == 3
    # waits come from Retry-After (1 s), not from the 10 ms backoff
    assert all(gap >= 0.95 for gap in flaky.gaps()), flaky.gaps()
    # the admin key is sent on every try
    assert {h["authorization"] for *_, h in flaky.script.seen} == {"Bearer admin"}


def test_retry_after_as_http_date(flaky):
    wall_minus_monotonic = time.time() - time.monotonic()
    target = int(time.time() + 2)  # an HTTP date has one-second resolution
    when = email.utils.formatdate(target, usegmt=True)
    flaky.play({"status": 503, "retry_after": when}, {"json": ADAPTERS})
    with client(flaky, backoff_base_s=0.01) as floe:
        floe.adapters.list()
    # the retry waits for the date the server named (not the 0.01 s backoff), and no longer
    assert len(flaky.times) == 2
    retried_at = flaky.times[1] + wall_minus_monotonic
    assert target - 0.05 <= retried_at <= target + 2.0


def test_exponential_backoff_without_retry_after(flaky):
    flaky.play({"status": 503}, {"status": 503}, {"status": 429}, {"json": ADAPTERS})
    with client(flaky, backoff_base_s=0.2, backoff_max_s=10, max_retries=3) as floe:
        floe.adapters.list()
    gaps = flaky.gaps()
    assert len(gaps) == 3
    # jitter keeps each wait in [50%, 100%] of 0.2 * 2**attempt
    for attempt, gap in enumerate(gaps):
        assert gap >= 0.5 * 0.2 * 2**attempt - 0.01, gaps
    assert gaps[2] > gaps[0]


def test_backoff_is_capped(flaky):
    flaky.play({"status": 429}, {"status": 429}, {"status": 429}, {"json": ADAPTERS})
    with client(flaky, backoff_base_s=0.3, backoff_max_s=0.3, max_retries=3) as floe:
        floe.adapters.list()
    assert all(0.14 <= gap < 1.0 for gap in flaky.gaps()), flaky.gaps()


def test_gives_up_after_max_retries_with_the_typed_error(flaky):
    flaky.play(*[{"status": 429, "retry_after": "0"}] * 5)
    with client(flaky, max_retries=2) as floe, pytest.raises(RateLimitError) as info:
        floe.adapters.list()
    assert len(flaky.times) == 3
    err = info.value
    assert err.status_code == 429 and err.type == "rate_limit_error" and err.code == "overloaded"
    assert err.message == "scripted 429" and err.headers["retry-after"] == "0"


def test_retry_after_beyond_the_cap_is_not_waited_for(flaky):
    flaky.play({"status": 503, "retry_after": "120"}, {"json": ADAPTERS})
    start = time.monotonic()
    with client(flaky, max_retry_after_s=60) as floe, pytest.raises(ServiceUnavailableError):
        floe.adapters.list()
    assert time.monotonic() - start < 5 and len(flaky.times) == 1


@pytest.mark.parametrize(("status", "error"), [(404, NotFoundError), (500, InternalServerError)])
def test_other_errors_are_not_retried(flaky, status, error):
    flaky.play({"status": status}, {"json": ADAPTERS})
    with client(flaky) as floe, pytest.raises(error) as info:
        floe.adapters.get("a")
    assert len(flaky.times) == 1 and info.value.status_code == status
    assert not isinstance(info.value, ServiceUnavailableError)


def test_error_without_openai_body_keeps_the_text(flaky):
    flaky.play({"status": 502, "text": "bad gateway from a proxy"})
    with client(flaky) as floe, pytest.raises(InternalServerError) as info:
        floe.metrics()
    assert info.value.message == "bad gateway from a proxy" and info.value.code is None


def test_read_timeout_raises_and_is_not_retried(flaky):
    flaky.play({"sleep": 2.0, "json": ADAPTERS}, {"json": ADAPTERS})
    with client(flaky, timeout=0.3, max_retries=3) as floe, pytest.raises(APITimeoutError):
        floe.adapters.list()
    assert len(flaky.times) == 1


def test_refused_connection_is_retried_then_raised():
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with Floe(f"http://127.0.0.1:{port}", max_retries=2, backoff_base_s=0.2) as floe:
        with pytest.raises(APIConnectionError):
            floe.health()  # health is never retried
        health_s = time.monotonic() - start
        with pytest.raises(APIConnectionError):
            floe.adapters.list()
    # two backoff waits: at least 0.1 + 0.2 s
    assert time.monotonic() - start - health_s >= 0.29


def test_ready_reads_503_as_not_ready_without_retrying(flaky):
    flaky.play({"status": 503, "retry_after": "5", "readiness": True,
                "json": {"ready": False, "checks": {"engine": False, "registry": True}}})
    with client(flaky) as floe:
        state = floe.ready()
    assert state.ready is False and state.checks == {"engine": False, "registry": True}
    assert len(flaky.times) == 1


def test_async_client_retries_too(flaky):
    flaky.play({"status": 503, "retry_after": "1"}, {"status": 429}, {"json": ADAPTERS})

    async def run():
        async with AsyncFloe(flaky.url, admin_key="admin", backoff_base_s=0.05) as floe:
            return await floe.adapters.list()

    listed = asyncio.run(run())
    assert listed.names() == ["a"] and len(flaky.times) == 3
    assert flaky.gaps()[0] >= 0.95 and flaky.gaps()[1] >= 0.02
