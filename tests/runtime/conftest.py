"""Fixtures for the FrozenRuntime tests: one real server for the package (one thread: the CPUs
are shared). The server also carries a third-party kind and family (tests/runtime/plugin.py)."""

from __future__ import annotations

import shutil

import pytest
import torch

from floe.adapters.encoder import EncoderConfig, write
from floe.adapters.image_encoder import model as image_encoder
from tests.runtime import plugin
from tests.runtime.values import ADMIN_KEY, API_KEY, IMAGE_LIMIT, IMAGE_SEED
from tests.serving import start_floe

torch.set_num_threads(1)


@pytest.fixture(scope="package")
def server(tiny_dir, llm, ts_adapter, tmp_path_factory):
    import httpx

    root = tmp_path_factory.mktemp("rt-adapters")
    shutil.copytree(ts_adapter, root / "tiny-ts")
    write(root / "enc-last", EncoderConfig(template="Text: {text}", layer=-1, final_norm=True),
          llm.fingerprint)
    image_encoder.write(root / "img-enc", llm.hidden_size, llm.fingerprint, seed=IMAGE_SEED)
    plugin.write_adapter(root / "bag-x2", scale=2.0)
    site = plugin.install(tmp_path_factory.mktemp("plugin"))  # a third party's kind and family
    server = start_floe({
        "model": {"path": str(tiny_dir), "name": "tiny"},
        "engine": {"kv_cache_memory_bytes": 64 * 2**20, "max_model_len": 512, "max_lora_rank": 16},
        "auth": {"api_keys": [API_KEY], "admin_key": ADMIN_KEY},
        "adapters": {"roots": [str(root)], "state_dir": str(tmp_path_factory.mktemp("rt-state"))},
        "runtime": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05, "max_series_length": 500,
                    "max_image_bytes": IMAGE_LIMIT},
        "retrieval": {"path": str(tmp_path_factory.mktemp("rt-qdrant"))},
        "ray": {"num_cpus": 2},
    }, tmp_path_factory.mktemp("rt-server"), env={"PYTHONPATH": str(site)})
    url = server.url
    client = httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {API_KEY}"})
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for name in ("tiny-ts", "enc-last", "img-enc", "bag-x2"):
        reply = client.post("/v1/adapters", json={"name": name, "source": str(root / name)}, headers=admin)
        assert reply.status_code == 201, reply.text
    try:
        yield client, url
    finally:
        client.close()
        assert server.stop()
