"""Drain: SIGTERM (what Kubernetes sends) lets a running stream finish, refuses new requests with
the OpenAI error body, and the server then exits on its own (server/drain.py)."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from tests.serving import start_floe

pytestmark = pytest.mark.slow

TOKENS = 600


def test_sigterm_drains_running_streams_and_refuses_new_requests(tiny_dir, tmp_path):
    server = start_floe({
        "model": {"path": str(tiny_dir), "name": "tiny"},
        "engine": {"kv_cache_memory_bytes": 128 * 2**20, "max_model_len": 1024},
        "runtime": {"enabled": False},
        "deployment": {"graceful_shutdown_s": 60},
        "ray": {"num_cpus": 2},
    }, tmp_path)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    lines: list[str] = []
    first = threading.Event()

    def consume() -> None:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line:
                    lines.append(line)
                    first.set()

    reader = threading.Thread(target=consume)
    try:
        reader.start()
        assert first.wait(60), "the stream never started"
        os.kill(server.process.pid, signal.SIGTERM)  # the main process only, as a supervisor does
        refused = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and refused is None:
            r = httpx.post(f"{server.url}/v1/chat/completions", timeout=30,
                           json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            if r.status_code == 503:
                refused = r
            time.sleep(0.2)
        assert refused is not None, "no new request was refused while draining"
        assert refused.json()["error"]["code"] == "draining" and refused.headers["retry-after"] == "1"
        assert httpx.get(f"{server.url}/ready", timeout=10).status_code == 503
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        assert reader.is_alive(), "the stream ended before the drain could be observed (make it longer)"
        reader.join(120)
        assert lines[-1] == "data: [DONE]", lines[-3:]
        usage = [line for line in lines if '"usage":{' in line.replace(" ", "")]
        assert usage and f'"completion_tokens":{TOKENS}' in usage[-1].replace(" ", "")
        server.process.wait(90)  # it exits by itself once drained
        assert server.process.returncode == 0
        assert "drained: no request in flight" in server.log.read_text()
    finally:
        if server.process.poll() is None:
            server.stop()
