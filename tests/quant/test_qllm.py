"""QLLM: reassembly algebra, the simulated W4A4 gain over round-to-nearest, the W8A8 export."""

from __future__ import annotations

import copy

import pytest
import torch

import floe.quant as fq
from floe.quant.calibration import token_batches
from floe.quant.methods.qllm import QLLMConfig, apply_qllm
from floe.quant.qllm_sim import SimQuantLinear, build_reassembly, fq_act

PPL_BOUND_EXPORT = 1.10  # the W8A8 export of QLLM-W4 weights, vs dense, on the tiny model


def _outlier_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(1024, 32, generator=g)
    X[:, 3] *= 40.0  # one activation-outlier channel
    X[:, 17] *= 15.0
    W = torch.randn(24, 32, generator=g)
    return X, W


def test_disassembly_splits_outliers_and_keeps_width():
    X, W = _outlier_data()
    M, (W2,) = build_reassembly(X.abs().amax(0), [W], X, n_outliers=2)
    assert M.shape == (32, 32) and W2.shape == W.shape
    Xr = X @ M
    assert Xr.abs().amax() < 0.6 * X.abs().amax()  # the outlier range is cut
    rel = ((Xr @ W2.T - X @ W.T).norm() / (X @ W.T).norm()).item()
    assert rel < 0.2  # assembly merges only similar small channels


def test_reassembly_is_exact_when_merged_weights_agree():
    X, W = _outlier_data()
    v = torch.randn(24, 1)
    W = v.expand(24, 32).clone()  # every column equal: merging any pair costs nothing
    W[:, 3] = torch.randn(24)
    M, (W2,) = build_reassembly(X.abs().amax(0), [W], X, n_outliers=2)
    assert (M != 0).sum() > 32  # something was split and merged
    torch.testing.assert_close(X @ M @ W2.T, X @ W.T, rtol=1e-4, atol=1e-3)


def test_reassembly_lowers_w4a4_error_on_outliers():
    X, W = _outlier_data(1)
    ref = X @ W.T
    rtn = SimQuantLinear(W, None, 4, 4)
    M, (W2,) = build_reassembly(X.abs().amax(0), [W], X, n_outliers=2)
    re = SimQuantLinear(W2, None, 4, 4, M)
    with torch.no_grad():
        assert ((re(X) - ref) ** 2).mean() < ((rtn(X) - ref) ** 2).mean()


def test_fq_act_levels():
    x = torch.randn(4, 64)
    assert all(len(torch.unique(r)) <= 16 for r in fq_act(x, 4))


@pytest.mark.slow
def test_qllm_beats_rtn_w4a4_simulated(dense, calib_texts, ppl_of):
    model, tok = dense
    ids = token_batches(tok, calib_texts, 64, 32)
    rtn_model, qllm_model = copy.deepcopy(model), copy.deepcopy(model)
    apply_qllm(rtn_model, ids, QLLMConfig(bits=4, act_bits=4, reassembly=False, rank=0, seq_len=64))
    apply_qllm(qllm_model, ids, QLLMConfig(bits=4, act_bits=4, seq_len=64, lrc_steps=100))
    assert ppl_of(qllm_model) < ppl_of(rtn_model)


def test_qllm_export_round_trip(tiny_model, calib_texts, dense_ppl, ppl_of, generate, tmp_path):
    cfg = fq.make_config("qllm", bits=4, act_bits=4, lrc_steps=20, seq_len=64, num_samples=16)
    out = fq.quantize(tiny_model, cfg, calibration=calib_texts, out=tmp_path / "q")
    m = fq.read_manifest(out)
    assert m.extra["scheme"] == "W8A8" and m.extra["simulated"] == "W4A4" and m.bits == 8
    model = fq.load_for_transformers(out)
    assert ppl_of(model) <= dense_ppl * PPL_BOUND_EXPORT
    assert len(generate(model)) == 8


@pytest.mark.slow
def test_vllm_cpu_serves_qllm_export(tiny_model, calib_texts, ppl_of, vllm_ppl, tmp_path):
    cfg = fq.make_config("qllm", bits=4, act_bits=4, lrc_steps=20, seq_len=64, num_samples=16)
    out = fq.quantize(tiny_model, cfg, calibration=calib_texts, out=tmp_path / "q")
    res = vllm_ppl(out)
    assert abs(res["ppl"] / ppl_of(fq.load_for_transformers(out)) - 1) < 0.03
