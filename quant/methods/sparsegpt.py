"""SparseGPT (Frantar & Alistarh 2023), 2:4: one-shot masks chosen with an OBS weight update.

Per linear, with the layer-input Hessian ``H = 2 X^T X / n`` and ``U = chol(H^-1)`` (upper):
columns are visited left to right; at the first column of every group of four, each row drops
the two weights with the smallest OBS saliency ``w^2 / U_jj^2`` (computed on the already
updated weights), and every pruned or kept column's error ``(w - q) / U_ii`` is pushed onto
the columns not yet visited through row ``i`` of ``U``, as GPTQ does for rounding error.
Layers go in order, each on the outputs of the already-pruned layers before it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from floe.quant.calibration import calibrated
from floe.quant.layerwise import sequential
from floe.quant.registry import MethodConfig, MethodResult, register_method


class SparseGPTConfig(MethodConfig):
    """One-shot 2:4 with OBS weight reconstruction (the remaining weights change)."""

    method: Literal["sparsegpt"] = "sparsegpt"
    num_samples: int = Field(64, description="calibration windows")
    seq_len: int = 128
    damp: float = Field(0.01, description="dampening added to diag(H), fraction of its mean")
    block_size: int = Field(128, description="columns updated together (lazy batch update)")


@torch.no_grad()
def sparsegpt_24(w: torch.Tensor, H: torch.Tensor, damp: float = 0.01, block_size: int = 128):
    """``w [out, in]``, ``H [in, in]`` -> (updated 2:4 weight ``[out, in]``, keep mask ``[out, in]``)."""
    W = w.clone().float()
    out_f, in_f = W.shape
    if in_f % 4 or block_size % 4:
        raise ValueError("in_features and block_size must be multiples of 4")
    H = H.clone().float()
    dead = torch.diag(H) == 0  # inputs never active: their weights can go for free
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(in_f)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    pruned = torch.zeros(out_f, in_f, dtype=torch.bool)
    for b0 in range(0, in_f, block_size):
        b1 = min(b0 + block_size, in_f)
        W1, U1 = W[:, b0:b1].clone(), U[b0:b1, b0:b1]  # [out, B], [B, B]
        d = torch.diag(U1)
        err = torch.zeros_like(W1)
        for i in range(b1 - b0):
            if i % 4 == 0:  # choose this group's two pruned weights per row
                sal = W1[:, i:i + 4] ** 2 / d[i:i + 4] ** 2  # [out, 4]
                drop = sal.topk(2, dim=1, largest=False).indices + (b0 + i)
                pruned.scatter_(1, drop, True)
            w_i = W1[:, i]
            q = w_i.masked_fill(pruned[:, b0 + i], 0.0)
            err[:, i] = (w_i - q) / d[i]
            W1[:, i:] -= err[:, i:i + 1] * U1[i:i + 1, i:]
            W1[:, i] = q  # exact zeros (the update leaves ~1e-8 residue)
        W[:, b0:b1] = W1
        W[:, b1:] -= err @ U[b0:b1, b1:]  # lazy update of the columns right of the block
    return W, ~pruned


def run_sparsegpt(model, input_ids: torch.Tensor, cfg: SparseGPTConfig) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place, layer by layer; returns keep masks ``{name: [out, in]}``."""
    def prune(name: str, lin: torch.nn.Linear, X: torch.Tensor) -> torch.Tensor:
        W, keep = sparsegpt_24(lin.weight.data, 2.0 * X.T @ X / X.shape[0], cfg.damp, cfg.block_size)
        lin.weight.data = W.to(lin.weight.dtype)
        return keep

    return sequential(model, input_ids, "sparsegpt", prune)


@register_method("sparsegpt", kind="prune", config=SparseGPTConfig, needs_calibration=True)
def _run_sparsegpt(model_dir: Path, cfg: SparseGPTConfig, texts, work_dir: Path) -> MethodResult:
    from floe.quant.methods.sparsity import finish

    model, ids = calibrated(model_dir, texts, cfg)
    masks = run_sparsegpt(model, ids, cfg)
    return finish(model, model_dir, work_dir, masks, {"calibration_windows": int(ids.shape[0])},
                  method="sparsegpt")
