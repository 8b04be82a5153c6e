"""2:4 pruning: exact patterns, the MaskLLM sampler, round trips, and prune-then-quantize."""

from __future__ import annotations

import pytest
import torch

import floe.quant as fq
from floe.quant.methods.maskllm import GumbelMaskedLinear
from floe.quant.model_io import decoder_linears
from floe.quant.sparse24 import CANDIDATES, groups, is_2to4, topk_mask

# Bound on the tiny model: a 2:4-pruned decoder stays within 1.5x dense held-out perplexity.
PPL_BOUND = 1.5


def assert_exact_2to4(model) -> int:
    n = 0
    for name, lin in decoder_linears(model):
        g = groups(lin.weight.data)
        assert ((g == 0).sum(-1) >= 2).all(), f"{name} breaks 2:4"
        n += 1
    return n


def test_candidates():
    assert CANDIDATES.shape == (6, 4)
    assert (CANDIDATES.sum(1) == 2).all() and len({tuple(r.tolist()) for r in CANDIDATES}) == 6


def test_topk_mask_keeps_two_largest():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.1, -0.9, 0.0]])
    assert topk_mask(w.abs()).tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]
    assert not is_2to4(w) and is_2to4(w * topk_mask(w.abs()))


def test_gumbel_mask_is_differentiable_and_anneals():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 3)
    logits = torch.randn(3, 2, 6)
    m = GumbelMaskedLinear(lin, logits.clone())
    m.train()
    m(torch.randn(5, 8)).sum().backward()
    assert m.logits.grad is not None and m.logits.grad.abs().sum() > 0
    m.eval()
    m.tau, m.scale = 0.01, 100.0  # low temperature, large scale: the soft mask is the hard one
    torch.testing.assert_close(m.soft_mask(), m.hard_mask())
    assert is_2to4(lin.weight.data * m.hard_mask())


@pytest.mark.parametrize("method,fields", [("magnitude", {}), ("wanda", {}),
                                           ("maskllm", {"steps": 40, "seq_len": 64, "num_samples": 64})])
def test_prune_round_trip(tiny_model, calib_texts, dense_ppl, ppl_of, generate, tmp_path, method, fields):
    out = fq.prune(tiny_model, fq.make_config(method, "prune", **fields), calibration=calib_texts,
                   out=tmp_path / method)
    m = fq.read_manifest(out)
    assert m.kind == "prune" and m.extra["sparsity"] == "2:4" and m.engine == "vllm"
    model = fq.load_for_transformers(out)
    assert assert_exact_2to4(model) == 7 * model.config.num_hidden_layers
    dense_zero = sum(int((lin.weight == 0).sum()) for _, lin in decoder_linears(model))
    total = sum(lin.weight.numel() for _, lin in decoder_linears(model))
    assert dense_zero / total >= 0.5
    assert ppl_of(model) <= dense_ppl * PPL_BOUND
    assert len(generate(model)) == 8


def test_maskllm_learns_beyond_its_prior(tiny_model, calib_texts, tmp_path):
    cfg = fq.make_config("maskllm", "prune", steps=40, seq_len=64, num_samples=64, lr=2e-3)
    out = fq.prune(tiny_model, cfg,
                   calibration=calib_texts, out=tmp_path / "m")
    stats = fq.read_manifest(out).extra["maskllm"]
    assert stats["groups_changed_from_prior"] > 0.0
    assert stats["final_loss"] < stats["first_loss"]


def test_pruned_then_quantized_keeps_2to4(tiny_model, calib_texts, dense_ppl, ppl_of, tmp_path):
    pruned = fq.prune(tiny_model, "magnitude", out=tmp_path / "p")
    out = fq.quantize(pruned, fq.make_config("gptq", bits=4, group_size=32), calibration=calib_texts,
                      out=tmp_path / "pq")
    model = fq.load_for_transformers(out)
    assert_exact_2to4(model)
    assert ppl_of(model) <= dense_ppl * PPL_BOUND * 1.1


def test_pruned_then_nf4(tiny_model, tmp_path, generate):
    pruned = fq.prune(tiny_model, "magnitude", out=tmp_path / "p")
    out = fq.quantize(pruned, "nf4", out=tmp_path / "pn")
    assert len(generate(fq.load_for_transformers(out))) == 8


@pytest.mark.slow
def test_vllm_cpu_serves_pruned(tiny_model, ppl_of, vllm_ppl, tmp_path):
    out = fq.prune(tiny_model, "magnitude", out=tmp_path / "p")
    res = vllm_ppl(out)
    assert abs(res["ppl"] / ppl_of(fq.load_for_transformers(out)) - 1) < 0.01
