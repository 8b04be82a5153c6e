"""One real floe application (Ray Serve + vLLM on the tiny built-in model) for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.live import ADMIN_KEY, API_KEY, LiveServer


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="session")
def live_server(tiny_dir, adapter_root, tmp_path_factory) -> Iterator[LiveServer]:
    """The real application: Gateway + AdapterRegistry + LLMServer(vLLM), over HTTP."""
    from tests.serving import start_floe

    server = start_floe({
        "model": {"path": str(tiny_dir), "name": "tiny"},
        # float32 so outputs can be compared exactly with transformers + peft.
        "engine": {"dtype": "float32", "kv_cache_memory_bytes": 128 * 2**20, "max_lora_rank": 16,
                   "max_loras": 4, "max_model_len": 1024},
        "http": {"max_body_bytes": 256 * 1024},
        "auth": {"api_keys": [API_KEY], "admin_key": ADMIN_KEY},
        "adapters": {"roots": [str(adapter_root)], "state_dir": str(tmp_path_factory.mktemp("state")),
                     "drain_timeout_s": 120, "max_loaded_per_replica": 3},
        "ray": {"num_cpus": 2},
    }, tmp_path_factory.mktemp("live-server"))
    try:
        yield LiveServer(url=server.url, model="tiny", model_dir=tiny_dir, adapter_root=adapter_root)
    finally:
        assert server.stop(), "the server did not stop within 90 s of Ctrl-C"


@pytest.fixture(scope="session")
def openai_client(live_server):
    from openai import OpenAI

    return OpenAI(base_url=live_server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def admin(live_server):
    import httpx

    with httpx.Client(base_url=live_server.url, timeout=300,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        yield client
