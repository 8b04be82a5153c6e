"""bitsandbytes int8 / nf4 / fp4: quantize, save, load, generate, perplexity bound."""

from __future__ import annotations

import pytest
import torch

import floe.quant as fq

# Bound on the tiny model: 4-bit and int8 stay within 10% of dense held-out perplexity.
PPL_BOUND = 1.10


@pytest.mark.parametrize("method", ["nf4", "fp4", "int8"])
def test_bnb_round_trip(tiny_model, dense, dense_ppl, ppl_of, generate, tmp_path, method):
    out = fq.quantize(tiny_model, method, out=tmp_path / method)
    m = fq.read_manifest(out)
    assert m.engine == "transformers" and m.load_kwargs["quantization_config"]
    model = fq.load_for_transformers(out)
    assert any("bnb" in type(mod).__module__ or "bitsandbytes" in type(mod).__module__
               for mod in model.modules()), "weights were not loaded as bitsandbytes layers"
    ppl = ppl_of(model)
    assert ppl <= dense_ppl * PPL_BOUND, (method, ppl, dense_ppl)
    assert len(generate(model)) == 8
    # a second load after inference on the first gives the same logits: the saved file is sound
    ids = dense[1]("The while statement", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = fq.load_for_transformers(out)(input_ids=ids).logits
    torch.testing.assert_close(a, b)


def test_nf4_weights_are_smaller(tiny_model, tmp_path):
    from floe.quant.evaluate import weight_mib

    out = fq.quantize(tiny_model, "nf4", out=tmp_path / "nf4")
    # embeddings and lm_head stay unquantized, so the saving on the decoder linears is diluted
    assert weight_mib(out) < weight_mib(tiny_model)
