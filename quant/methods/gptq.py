"""GPTQ (Frantar et al. 2022) and round-to-nearest, exported as compressed-tensors for vLLM.

GPTQ quantizes one column at a time and pushes each column's rounding error onto the columns
not yet quantized through the inverse Hessian ``H = 2 X^T X`` of the layer's inputs; layers are
done in order, each seeing the outputs of the already-quantized layers before it. Both write
``pack-quantized`` W4A16 / W8A16 (symmetric, per group), which vLLM loads on CPU and GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field

from floe.quant.calibration import calibrated
from floe.quant.ct_export import QLinear, dequant, group_scale, qrange, rtn, write_compressed
from floe.quant.errors import UnsupportedBitsError
from floe.quant.layerwise import sequential
from floe.quant.model_io import decoder_linears, load_dense
from floe.quant.registry import MethodConfig, MethodResult, register_method


class WeightOnlyConfig(MethodConfig):
    """Fields shared by GPTQ and RTN: integer weights, symmetric, per group."""

    SUPPORTED_BITS: ClassVar[tuple[int, ...]] = (4, 8)
    bits: int = 4
    group_size: int = Field(128, description="columns per scale; -1 = one scale per output row")
    scheme: Literal["W4A16", "W8A16", "W8A8"] | None = Field(
        None, description="export scheme; default W4A16 for 4 bits, W8A8 for 8 bits (vLLM CPU has "
        "no W8A16 kernel; W8A8 adds dynamic per-token int8 activations and per-channel weights)")

    def resolved(self):
        """A copy with ``scheme`` filled in and checked against ``bits``."""
        scheme = self.scheme or ("W4A16" if self.bits == 4 else "W8A8")
        if (scheme == "W4A16") != (self.bits == 4):
            raise UnsupportedBitsError(f"scheme {scheme} does not hold {self.bits}-bit weights")
        # int-quantized W8A8 has one scale per output channel
        group = -1 if scheme == "W8A8" else self.group_size
        return self.model_copy(update={"scheme": scheme, "group_size": group})


class GPTQConfig(WeightOnlyConfig):
    """Weight-only integer quantization with GPTQ error feedback."""

    method: Literal["gptq"] = "gptq"
    damp: float = Field(0.01, description="dampening added to diag(H), fraction of its mean")
    num_samples: int = Field(64, description="calibration windows")
    seq_len: int = Field(128, description="tokens per calibration window")


class RTNConfig(WeightOnlyConfig):
    """Round-to-nearest weight-only quantization (the baseline GPTQ improves on)."""

    method: Literal["rtn"] = "rtn"


def gptq_quantize(w: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, damp: float) -> QLinear:
    """GPTQ on one weight ``[out, in]`` given its input Hessian ``[in, in]``."""
    W = w.clone().float()
    out_f, in_f = W.shape
    g = in_f if group_size in (-1, 0) else group_size
    H = H.clone()
    zeros = W == 0  # NOTE: exact zeros (a 2:4-pruned input) stay zero, so sparsity survives
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(in_f)
    # upper Cholesky factor of H^-1: row i holds the error-propagation coefficients of column i
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    lo, hi = qrange(bits)
    Q = torch.zeros(out_f, in_f, dtype=torch.int8)
    scales = torch.zeros(out_f, in_f // g)
    for i in range(in_f):
        if i % g == 0:  # scale of a group from the already error-corrected weights
            scales[:, i // g] = group_scale(W[:, i:i + g], bits, -1).squeeze(1)
        s = scales[:, i // g]
        q = torch.clamp(torch.round(W[:, i] / s), lo, hi)
        Q[:, i] = q.to(torch.int8)
        err = (W[:, i] - q * s) / Hinv[i, i]
        W[:, i + 1:] -= err.unsqueeze(1) * Hinv[i, i + 1:].unsqueeze(0)
        W[:, i + 1:].masked_fill_(zeros[:, i + 1:], 0.0)
    return QLinear(Q, scales)


def check_group(model, group_size: int) -> None:
    for name, lin in decoder_linears(model):
        if group_size not in (-1, 0) and lin.in_features % group_size:
            raise UnsupportedBitsError(
                f"{name}: in_features {lin.in_features} not a multiple of group_size {group_size}")


def run_gptq(model, input_ids: torch.Tensor, cfg: GPTQConfig) -> dict[str, QLinear]:
    def quantize(name: str, lin: torch.nn.Linear, X: torch.Tensor) -> QLinear:
        ql = gptq_quantize(lin.weight.data, 2.0 * X.T @ X / X.shape[0], cfg.bits, cfg.group_size, cfg.damp)
        lin.weight.data = dequant(ql)
        return ql

    return sequential(model, input_ids, "gptq", quantize)


def _result(cfg, extra=None) -> MethodResult:
    # NOTE: vLLM's CPU WNA16 kernel has no fp32 path, so bf16 activations for W4A16
    dtype = "bfloat16" if cfg.scheme != "W8A8" else "float32"
    return MethodResult(engine="vllm", load_kwargs={"quantization": "compressed-tensors", "dtype": dtype},
                        bits=cfg.bits, group_size=cfg.group_size,
                        extra={"format": "compressed-tensors", "scheme": cfg.scheme, **(extra or {})})


@register_method("gptq", kind="quantize", config=GPTQConfig, needs_calibration=True)
def _run_gptq(model_dir: Path, cfg: GPTQConfig, texts, work_dir: Path) -> MethodResult:
    cfg = cfg.resolved()
    model, ids = calibrated(model_dir, texts, cfg)
    check_group(model, cfg.group_size)
    qlayers = run_gptq(model, ids, cfg)
    write_compressed(model, model_dir, work_dir, qlayers, cfg.scheme, cfg.group_size)
    return _result(cfg, {"calibration_windows": int(ids.shape[0])})


@register_method("rtn", kind="quantize", config=RTNConfig)
def _run_rtn(model_dir: Path, cfg: RTNConfig, texts, work_dir: Path) -> MethodResult:
    cfg = cfg.resolved()
    model, _tok = load_dense(model_dir)
    check_group(model, cfg.group_size)
    qlayers = {n: rtn(lin.weight.data, cfg.bits, cfg.group_size) for n, lin in decoder_linears(model)}
    write_compressed(model, model_dir, work_dir, qlayers, cfg.scheme, cfg.group_size)
    return _result(cfg)
