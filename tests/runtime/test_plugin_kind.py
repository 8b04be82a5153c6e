"""A third-party adapter kind and endpoint family, installed from a package through the
entry-point groups, serve requests through the real runtime with no edit to floe."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def test_the_plugin_family_is_attached(server):
    client, _ = server
    reply = client.get("/v1/plugins/bag")
    assert reply.status_code == 200, reply.text
    assert {"bag", "lora", "timeseries"} <= set(reply.json()["kinds"])


def test_a_plugin_kind_serves_embeddings_on_the_frozen_base(server, llm):
    client, _ = server
    texts = ["the frozen base", "hot-swapped adapters"]
    reply = client.post("/v1/embeddings", json={"model": "bag-x2", "input": texts})
    assert reply.status_code == 200, reply.text
    got = torch.tensor([d["embedding"] for d in reply.json()["data"]])
    table = llm.word_embeddings.float()
    want = torch.stack([table[torch.tensor(llm.tokenize(t))].mean(0) * 2.0 for t in texts])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert reply.json()["usage"]["prompt_tokens"] == sum(len(llm.tokenize(t)) for t in texts)


def test_a_plugin_kinds_validation_is_a_400(server):
    client, _ = server
    reply = client.post("/v1/embeddings", json={"model": "bag-x2", "input": [[1, 2, 3]]})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "input"


def test_the_torch_free_processes_stay_torch_free():
    """What the gateway and the registry import: the seam, every kind's manifest part, families."""
    probe = ("import sys\n"
             "from floe.server.kinds import known_kinds\n"
             "from floe.server.gateway.families import discover\n"
             "from floe.server.registry.deployment import RegistryServer\n"
             "from floe.server.gateway.deployment import Gateway\n"
             "known_kinds(); discover()\n"
             "print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
