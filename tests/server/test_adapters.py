"""LoRA hot swap on the real server, and mixed base + adapter batches against transformers + peft."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.server.live import ADMIN_KEY, API_KEY, make_adapter

pytestmark = pytest.mark.slow

PROMPTS = ["The quick brown fox", "In the beginning", "Numbers like 42 and 7"]
MAX_TOKENS = 10


def _generate_ids(client, model: str, prompt: str, max_tokens: int = MAX_TOKENS) -> list[int]:
    reply = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                      extra_body={"return_token_ids": True})
    return reply.choices[0].model_extra["token_ids"]


def _reference_ids(base_dir, adapter_dir, prompts) -> dict[str, list[int]]:
    """transformers (+ peft) in fp32, greedy: the outputs each request must reproduce."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    out = {}
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            gen = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False,
                                 eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
            out[prompt] = gen[0, ids.shape[1]:].tolist()
    return out


def _add(admin, name, source):
    return admin.post("/v1/adapters", json={"name": name, "source": str(source)})


def test_mixed_base_and_adapter_batch_matches_transformers_peft(live_server, openai_client, admin):
    alpha = make_adapter(live_server.adapter_root, "mix-alpha", live_server.model_dir, seed=11)
    beta = make_adapter(live_server.adapter_root, "mix-beta", live_server.model_dir, seed=12)
    assert _add(admin, "mix-alpha", alpha).status_code == 201
    assert _add(admin, "mix-beta", beta).status_code == 201

    jobs = [(model, p) for p in PROMPTS for model in (live_server.model, "mix-alpha", "tiny:mix-beta")]
    barrier = threading.Barrier(len(jobs))

    def run(job):
        barrier.wait()  # all requests reach the engine together, so they share batches
        return _generate_ids(openai_client, *job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        got = dict(zip(jobs, pool.map(run, jobs)))

    expected = {live_server.model: _reference_ids(live_server.model_dir, None, PROMPTS),
                "mix-alpha": _reference_ids(live_server.model_dir, alpha, PROMPTS),
                "tiny:mix-beta": _reference_ids(live_server.model_dir, beta, PROMPTS)}
    for (model, prompt), ids in got.items():
        assert ids == expected[model][prompt], f"{model} / {prompt!r}"
    # and the adapters really change the outputs
    assert expected["mix-alpha"] != expected[live_server.model]
    assert expected["mix-alpha"] != expected["tiny:mix-beta"]


def test_hot_swap_readd_and_delete_during_stream(live_server, openai_client, admin):
    root, base = live_server.adapter_root, live_server.model_dir
    source = make_adapter(root, "swap", base, seed=21)
    created = _add(admin, "swap", source)
    assert created.status_code == 201, created.text
    assert created.json()["state"] == "ready"
    first = _generate_ids(openai_client, "swap", PROMPTS[0])
    assert first == _reference_ids(base, source, PROMPTS[:1])[PROMPTS[0]]
    assert "swap" in [m.id for m in openai_client.models.list().data]

    # Same name, same path, other weights: a new version, new outputs, never the stale ones.
    source = make_adapter(root, "swap", base, seed=22)
    replaced = _add(admin, "swap", source)
    assert replaced.status_code == 201
    assert replaced.json()["version"] != created.json()["version"]
    second = _generate_ids(openai_client, "swap", PROMPTS[0])
    assert second == _reference_ids(base, source, PROMPTS[:1])[PROMPTS[0]]
    assert second != first
    # Identical content again is idempotent.
    assert _add(admin, "swap", source).status_code == 200

    # Delete while a stream runs: the stream completes, later requests get 404.
    stream = openai_client.completions.create(model="swap", prompt=PROMPTS[1], max_tokens=200,
                                              temperature=0, stream=True, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    first_chunk = next(chunks)
    deleted = {}
    remover = threading.Thread(target=lambda: deleted.update(
        admin.delete("/v1/adapters/swap").json()))
    remover.start()
    time.sleep(0.5)
    with pytest.raises(openai.NotFoundError):
        openai_client.completions.create(model="swap", prompt="x", max_tokens=2)
    rest = list(chunks)
    text = (first_chunk.choices[0].text if first_chunk.choices else "") + "".join(
        c.choices[0].text for c in rest if c.choices)
    assert rest[-1].choices[0].finish_reason == "length"
    assert text
    remover.join(timeout=60)
    assert deleted == {"id": "swap", "object": "adapter.deleted", "deleted": True,
                       "state": "unloaded", "version": replaced.json()["version"]}
    assert "swap" not in [m.id for m in openai_client.models.list().data]
    assert admin.get("/v1/adapters/swap").status_code == 404


def test_version_pinning(live_server, openai_client, admin):
    source = make_adapter(live_server.adapter_root, "pinned", live_server.model_dir, seed=31)
    version = _add(admin, "pinned", source).json()["version"]
    assert _generate_ids(openai_client, f"pinned@{version}", PROMPTS[0], 3)
    with pytest.raises(openai.NotFoundError):
        openai_client.completions.create(model="pinned@000000000000", prompt="x", max_tokens=2)


def test_admin_api_errors(live_server, admin, tmp_path):
    outside = make_adapter(tmp_path, "outside", live_server.model_dir, seed=41)
    response = _add(admin, "outside", outside)
    assert response.status_code == 403
    assert response.json()["error"]["param"] == "source"

    traversal = _add(admin, "trav", f"{live_server.adapter_root}/../../etc")
    assert traversal.status_code == 403

    too_big = make_adapter(live_server.adapter_root, "too-big", live_server.model_dir, seed=42, rank=32)
    response = _add(admin, "too-big", too_big)
    assert response.status_code == 400
    assert "rank" in response.json()["error"]["message"]
    assert admin.get("/v1/adapters/too-big").status_code == 404

    not_adapter = live_server.adapter_root / "not-an-adapter"
    not_adapter.mkdir(exist_ok=True)
    (not_adapter / "readme.txt").write_text("hello")
    assert _add(admin, "nope", not_adapter).status_code == 400

    assert _add(admin, "bad name!", live_server.adapter_root).status_code == 400
    assert _add(admin, "tiny", live_server.adapter_root).status_code == 409
    assert admin.post("/v1/adapters", json={"name": "x"}).status_code == 400
    assert admin.delete("/v1/adapters/never-added").status_code == 404

    # The admin API needs the admin key; an API key is not enough.
    with_api_key = httpx.get(f"{live_server.url}/v1/adapters",
                             headers={"Authorization": f"Bearer {API_KEY}"})
    assert with_api_key.status_code == 403
    assert httpx.get(f"{live_server.url}/v1/adapters").status_code == 401
    listed = admin.get("/v1/adapters").json()
    assert listed["object"] == "list"
    assert ADMIN_KEY not in str(listed)


def test_lru_eviction_and_reload_keep_outputs_exact(live_server, openai_client, admin):
    """More adapters than the replica's LRU holds (3): evicted ones reload with their own weights."""
    import re

    names = [f"lru-{i}" for i in range(5)]
    sources = {}
    for i, name in enumerate(names):
        sources[name] = make_adapter(live_server.adapter_root, name, live_server.model_dir, seed=50 + i)
        assert _add(admin, name, sources[name]).status_code == 201
    expected = {name: _reference_ids(live_server.model_dir, sources[name], PROMPTS[:1])[PROMPTS[0]]
                for name in names}
    for _ in range(2):
        for name in names:
            assert _generate_ids(openai_client, name, PROMPTS[0]) == expected[name], name
    time.sleep(1.0)  # evictions unload asynchronously
    metrics = httpx.get(f"{live_server.url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    loaded = float(re.search(r"^floe_adapters_loaded (\S+)$", metrics, re.M).group(1))
    assert loaded <= 3
