"""`floe serve --model <floe.quant output>`: each engine kind serves its outputs.

bitsandbytes (nf4) runs through the transformers engine on CPU; GPTQ W4A16 compressed-tensors
runs through vLLM with the manifest's load kwargs (quantization, bf16 kernels).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from floe.server.config import EngineConfig
from floe.server.engine.messages import OpenAICall, ResponseHead
from floe.server.engine.vllm_engine import vllm_cli_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quantized(tiny_dir, tmp_path_factory):
    import floe.quant as fq

    out = tmp_path_factory.mktemp("quant")
    return {
        "nf4": fq.quantize(tiny_dir, "nf4", out=out / "nf4"),
        "gptq4": fq.quantize(tiny_dir, fq.make_config("gptq", bits=4, group_size=64),
                             calibration=["The harbour was quiet at dawn."] * 8, out=out / "gptq4"),
    }


def _collect(engine, call: OpenAICall):
    async def go():
        items = [item async for item in engine.openai(call)]
        return items[0], items[1:]
    return go()


def test_manifest_load_kwargs_reach_vllm(quantized):
    import floe.quant as fq

    manifest = fq.read_manifest(quantized["gptq4"])
    args = vllm_cli_args(EngineConfig(), quantized["gptq4"], "q", manifest.load_kwargs)
    assert args[args.index("--quantization") + 1] == "compressed-tensors"
    assert args[args.index("--dtype") + 1] == manifest.load_kwargs.get("dtype", "auto")
    explicit = vllm_cli_args(EngineConfig(dtype="float32"), quantized["gptq4"], "q", manifest.load_kwargs)
    assert explicit[explicit.index("--dtype") + 1] == "float32"


def test_nf4_through_the_transformers_engine_matches_its_model(quantized):
    import torch
    from transformers import AutoTokenizer

    import floe.quant as fq
    from floe.server.engine.transformers_engine import TransformersEngine

    path = quantized["nf4"]
    engine = TransformersEngine(path, "q", 512)

    async def scenario():
        await engine.start()
        whole = [i async for i in engine.openai(OpenAICall("completions", {
            "model": "q", "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0}))]
        stream = [i async for i in engine.openai(OpenAICall("chat", {
            "model": "q", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "stream": True, "stream_options": {"include_usage": True}}))]
        bad = [i async for i in engine.openai(OpenAICall("chat", {
            "model": "q", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}))]
        return whole, stream, bad

    whole, stream, bad = asyncio.run(scenario())
    head = whole[0]
    assert isinstance(head, ResponseHead) and head.status == 200
    assert head.body["usage"]["completion_tokens"] == 6
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = fq.load_for_transformers(path)
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None,
                             pad_token_id=tokenizer.pad_token_id)
    assert head.body["choices"][0]["text"] == tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    assert stream[0].streaming and stream[-1] == "data: [DONE]\n\n"
    assert json.loads(stream[-2].removeprefix("data: "))["usage"]["completion_tokens"] == 4
    assert bad[0].status == 400 and bad[0].body["error"]["param"] == "logprobs"


def test_floe_serve_runs_a_bitsandbytes_checkpoint(quantized, tmp_path):
    """`floe serve --model <nf4 dir>`: LLMServer picks the transformers engine from the manifest."""
    import sys

    from openai import OpenAI

    from tests.serving import free_port, spawn_floe, stop_floe

    port = free_port()
    proc, url = spawn_floe([sys.executable, "-m", "floe.server.cli", "serve", "--model",
                            str(quantized["nf4"]), "--port", str(port)], port, tmp_path / "serve.log")
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        model = quantized["nf4"].name
        assert [m.id for m in client.models.list().data] == [model]
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=5, temperature=0)
        assert reply.usage.completion_tokens == 5
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0,
            stream=True) if c.choices)
        assert text == reply.choices[0].message.content
    finally:
        assert stop_floe(proc)
