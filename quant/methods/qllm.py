"""QLLM (Liu et al. 2024): adaptive channel reassembly + low-rank error correction.

Per decoder layer, on the already-quantized path's inputs:
1. for every group of linears sharing an input (q/k/v, gate/up, o, down), try splitting the
   k largest-magnitude activation channels (k from ``outlier_candidates``; 0 = no reassembly),
   merging as many similar channels back, and keep the k with the lowest quantized output error
   on the calibration tokens (the adaptive sub-channel count);
2. train low-rank ``B A`` per linear, with ``W'`` frozen, through simulated W/A quantization
   (straight-through), to match the full-precision layer output; then fuse: ``Q(W' + B A)``.
Evaluation is simulated quantization (as the paper's). The runnable export folds the
reassembly into the weights, ``Q(W' + BA) M^T``, and stores them as compressed-tensors W8A8
(int8 per-channel weights, dynamic per-token int8 activations), which vLLM runs on CPU and GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from floe.quant.calibration import calibrated
from floe.quant.ct_export import rtn, write_compressed
from floe.quant.layerwise import capture_layer_inputs, layer_linears, record_inputs, run_layer
from floe.quant.progress import report
from floe.quant.qllm_sim import SimQuantLinear, build_reassembly, fq_act, fq_weight
from floe.quant.registry import MethodConfig, MethodResult, register_method


class QLLMConfig(MethodConfig):
    """QLLM at ``bits`` weights / ``act_bits`` activations (simulated); export W8A8."""

    SUPPORTED_BITS: ClassVar[tuple[int, ...]] = (4, 6, 8)
    method: Literal["qllm"] = "qllm"
    bits: int = Field(4, description="weight bits of the simulated quantization (4, 6, 8)")
    act_bits: int = Field(4, ge=2, le=16, description="activation bits, per token (16 = none)")
    reassembly: bool = Field(True, description="adaptive channel disassembly / assembly")
    outlier_candidates: list[int] = Field([0, 1, 2, 4, 8, 16], description="channel counts tried")
    max_split: int = Field(4, ge=2, description="most sub-channels one outlier channel becomes")
    rank: int = Field(8, ge=0, description="rank of the low-rank correction (0 = none)")
    lrc_steps: int = Field(60, ge=0, description="Adam steps per decoder layer")
    lrc_lr: float = 2e-3
    batch_size: int = 4
    num_samples: int = 32
    seq_len: int = 128
    max_tokens_stats: int = Field(2048, description="tokens used to pick the reassembly")
    seed: int = 0


def _slice_kw(kw: dict, idx: torch.Tensor, n: int) -> dict:
    def cut(v):
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n:
            return v[idx]
        if isinstance(v, tuple):
            return tuple(cut(x) for x in v)
        return v

    return {k: cut(v) for k, v in kw.items()}


def _group_by_input(rec: dict[str, list[torch.Tensor]]) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, xs in rec.items():
        groups.setdefault(xs[0].data_ptr(), []).append(name)
    return list(groups.values())


@torch.no_grad()
def _choose_reassembly(X, weights, cfg: QLLMConfig):
    """(M or None, new weights, chosen k) with the lowest simulated output error."""
    ref = [X @ w.T for w in weights]
    absmax = X.abs().amax(0)
    best = (None, weights, 0)
    best_err = sum(((fq_act(X, cfg.act_bits) @ fq_weight(w, cfg.bits).T - r) ** 2).sum() for w, r in zip(weights, ref))
    for k in cfg.outlier_candidates if cfg.reassembly else []:
        if k == 0 or k >= X.shape[1] // 4:
            continue
        built = build_reassembly(absmax, weights, X, k, cfg.max_split)
        if built is None:
            continue
        M, ws = built
        Xq = fq_act(X @ M, cfg.act_bits)
        err = sum(((Xq @ fq_weight(w, cfg.bits).T - r) ** 2).sum() for w, r in zip(ws, ref))
        if err < best_err:
            best, best_err = (M, ws, k), err
    return best


def _swap(model, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def apply_qllm(model, ids: torch.Tensor, cfg: QLLMConfig) -> dict:
    """Replace every decoder linear by a SimQuantLinear (in place); returns per-layer choices.

    With ``reassembly=False, rank=0`` this is plain round-to-nearest W/A quantization.
    """
    torch.manual_seed(cfg.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    hs_fp, kw = capture_layer_inputs(model, ids)
    hs_q, n = hs_fp.clone(), ids.shape[0]
    chosen: dict[str, int] = {}
    for idx, layer in enumerate(model.model.layers):
        linears = layer_linears(model, idx)
        with torch.no_grad(), record_inputs(linears) as rec:
            run_layer(layer, hs_q, kw)
            target = run_layer(layer, hs_fp, kw)
        sims = []
        for names in _group_by_input(rec):
            X = torch.cat(rec[names[0]]).float()
            X = X[torch.randperm(len(X))[: cfg.max_tokens_stats]]
            M, ws, k = _choose_reassembly(X, [linears[nm].weight.data for nm in names], cfg)
            for nm, w in zip(names, ws):
                sim = SimQuantLinear(w, linears[nm].bias, cfg.bits, cfg.act_bits, M, cfg.rank)
                _swap(model, nm, sim)
                sims.append(sim)
                chosen[nm] = k
        del rec
        if cfg.rank and cfg.lrc_steps:
            _train_lrc(layer, sims, hs_q, target, kw, n, cfg)
        with torch.no_grad():
            hs_q, hs_fp = run_layer(layer, hs_q, kw), target
        report("qllm layers", idx + 1, len(model.model.layers))
    return chosen


def _train_lrc(layer, sims, hs_q, target, kw, n, cfg: QLLMConfig) -> None:
    params = [p for s in sims for p in (s.lora_A, s.lora_B)]
    opt = torch.optim.Adam(params, lr=cfg.lrc_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.lrc_steps):
        b = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
        out = run_layer(layer, hs_q[b], _slice_kw(kw, b, n))
        loss = torch.nn.functional.mse_loss(out, target[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)


@torch.no_grad()
def fold_to_dense(model) -> list[str]:
    """Replace each SimQuantLinear by an nn.Linear holding its effective (dequantized) weight."""
    names = [n for n, m in model.named_modules() if isinstance(m, SimQuantLinear)]
    for name in names:
        sim = model.get_submodule(name)
        w = sim.effective_weight()
        lin = nn.Linear(w.shape[1], w.shape[0], bias=sim.bias is not None)
        lin.weight.data = w
        if sim.bias is not None:
            lin.bias.data = sim.bias.data
        _swap(model, name, lin)
    return names


@register_method("qllm", kind="quantize", config=QLLMConfig, needs_calibration=True)
def _run_qllm(model_dir: Path, cfg: QLLMConfig, texts, work_dir: Path) -> MethodResult:
    model, ids = calibrated(model_dir, texts, cfg)
    chosen = apply_qllm(model, ids, cfg)
    names = fold_to_dense(model)
    qlayers = {n: rtn(model.get_submodule(n).weight.data, 8, -1) for n in names}
    write_compressed(model, model_dir, work_dir, qlayers, "W8A8", -1)
    return MethodResult(
        engine="vllm", load_kwargs={"quantization": "compressed-tensors", "dtype": "float32"},
        bits=8, group_size=-1,
        extra={"format": "compressed-tensors", "scheme": "W8A8",
               "simulated": f"W{cfg.bits}A{cfg.act_bits}", "weight_grid_bits": cfg.bits,
               "split_channels": {k: v for k, v in chosen.items() if v}},
    )
