"""Health, readiness and Prometheus metrics of the real server."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.live import API_KEY

pytestmark = pytest.mark.slow


def test_health_and_ready(live_server):
    """The probes answer without a key (kubelet sends none); the metrics need one."""
    assert httpx.get(f"{live_server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{live_server.url}/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert httpx.get(f"{live_server.url}/metrics").status_code == 401


def test_metrics_after_traffic(openai_client, live_server):
    stream = openai_client.chat.completions.create(
        model=live_server.model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True)
    for _ in stream:
        pass
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    # NOTE: a stream is counted when the gateway's generator finishes, a moment after the
    # client has read `[DONE]`: poll briefly instead of racing it.
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(f"{live_server.url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        statuses = {(s.labels["route"], s.labels["status"]) for s in families["floe_requests"].samples}
        if {("chat", "200"), ("chat", "404")} <= statuses or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ("chat", "200") in statuses and ("chat", "404") in statuses
    ttft = [s for s in families["floe_time_to_first_token_seconds"].samples if s.name.endswith("_count")]
    assert ttft and ttft[0].value >= 1
    assert "floe_inter_token_latency_seconds" in families
    assert "floe_requests_in_flight" in families
    assert "floe_adapters" in families and "floe_adapters_loaded" in families
    assert any(name.startswith("vllm:") for name in families), "vLLM's engine metrics are exposed"
