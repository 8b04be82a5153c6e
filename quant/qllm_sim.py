"""QLLM building blocks: fake quantization, channel reassembly, simulated quantized linears.

Shapes: activations ``X [tokens, C]``, weights ``W [out, C]``. A reassembly is a matrix
``M [C, C]`` with ``X' = X M`` and a weight ``W' [out, C]`` with ``X' W'^T ~= X W^T``:
disassembly splits an outlier channel c into ``T_c`` sub-channels carrying ``x_c / T_c`` each
(the weight column is repeated, so the product is exact); assembly then merges pairs of
similar channels back (``x_j + x_k`` with weight ``(w_j + w_k) / 2``) until the width is C again.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def fq_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel fake quantization with a straight-through gradient."""
    qmax = 2 ** (bits - 1) - 1
    s = w.detach().abs().amax(1, keepdim=True).clamp_min(1e-8) / qmax
    q = torch.clamp(torch.round(w / s), -qmax - 1, qmax) * s
    return w + (q - w).detach()


def fq_act(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric per-token fake quantization with a straight-through gradient."""
    if bits >= 16:
        return x
    levels = 2 ** bits - 1
    lo = x.detach().amin(-1, keepdim=True)
    hi = x.detach().amax(-1, keepdim=True)
    s = (hi - lo).clamp_min(1e-8) / levels
    z = torch.round(-lo / s)
    q = (torch.clamp(torch.round(x / s) + z, 0, levels) - z) * s
    return x + (q - x).detach()


def build_reassembly(x_absmax: torch.Tensor, weights: list[torch.Tensor], X: torch.Tensor,
                     n_outliers: int, max_split: int = 4) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """Split the ``n_outliers`` largest channels into ``ceil(max / theta)`` (at most ``max_split``)
    sub-channels each, merge as many similar pairs back; (M, [W']) or None if it cannot."""
    C = x_absmax.numel()
    if n_outliers == 0:
        return None
    order = torch.argsort(x_absmax, descending=True)
    theta = x_absmax[order[n_outliers]].item()  # the largest channel kept whole
    outliers = order[:n_outliers]
    T = torch.ceil(x_absmax[outliers] / max(theta, 1e-8)).long().clamp(1, max_split)
    extra = int((T - 1).sum())
    # D [C, C + extra]: sub-channel columns; src[j] = original channel of sub-channel j
    src = torch.cat([torch.arange(C), outliers.repeat_interleave(T - 1)])
    scale = torch.ones(C + extra)
    for c, t in zip(outliers.tolist(), T.tolist()):
        scale[src == c] = 1.0 / t
    D = torch.zeros(C, C + extra)
    D[src, torch.arange(C + extra)] = scale
    slot = torch.arange(C + extra)
    if extra:
        pairs = _similar_pairs(X, weights, x_absmax, outliers, theta, extra)
        if len(pairs) < extra:
            return None
        slot = _assign_slots(C + extra, pairs)
    A = torch.zeros(C + extra, C)
    A[torch.arange(C + extra), slot] = 1.0
    M = D @ A
    counts = A.sum(0).clamp_min(1.0)
    new_ws = [(w[:, src] @ A) / counts for w in weights]  # merged columns averaged
    return M, new_ws


def _similar_pairs(X, weights, x_absmax, outliers, theta, n_pairs):
    """Greedy disjoint pairs (j, k) minimising ||x_j - x_k|| * ||w_j - w_k|| among small channels."""
    C = x_absmax.numel()
    cand = torch.ones(C, dtype=torch.bool)
    cand[outliers] = False
    small = cand & (x_absmax <= theta / 2)
    if int(small.sum()) >= 2 * n_pairs:
        cand = small
    idx = torch.nonzero(cand).squeeze(1)
    Wcat = torch.cat(weights, 0)[:, idx].T  # [n, out_total]
    cost = torch.cdist(X[:, idx].T, X[:, idx].T) * torch.cdist(Wcat, Wcat)
    cost.fill_diagonal_(math.inf)
    iu = torch.triu_indices(len(idx), len(idx), 1)
    flat = cost[iu[0], iu[1]]
    used, pairs = set(), []
    for p in torch.argsort(flat).tolist():
        a, b = idx[iu[0, p]].item(), idx[iu[1, p]].item()
        if a in used or b in used:
            continue
        used.update((a, b))
        pairs.append((a, b))
        if len(pairs) == n_pairs:
            break
    return pairs


def _assign_slots(n: int, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """Map n channels to n - len(pairs) slots; each pair shares one slot, order preserved."""
    merged_into = {b: a for a, b in pairs}
    slot = torch.empty(n, dtype=torch.long)
    nxt = 0
    for j in range(n):
        if j in merged_into:
            continue
        slot[j] = nxt
        nxt += 1
    for b, a in merged_into.items():
        slot[b] = slot[a]
    return slot


class SimQuantLinear(nn.Module):
    """``fq_act(X M) @ fq_weight(W' + B A)^T + bias``; W' frozen, A and B the low-rank correction."""

    def __init__(self, weight, bias, wbits: int, abits: int, M=None, rank: int = 0):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.register_buffer("M", None if M is None else M.detach().clone())
        self.wbits, self.abits = wbits, abits
        out_f, in_f = weight.shape
        if rank:
            self.lora_A = nn.Parameter(torch.randn(rank, in_f) / math.sqrt(in_f))
            self.lora_B = nn.Parameter(torch.zeros(out_f, rank))
        else:
            self.lora_A = self.lora_B = None

    def fused_weight(self) -> torch.Tensor:
        w = self.weight
        if self.lora_A is not None:
            w = w + self.lora_B @ self.lora_A
        return w

    def forward(self, x):
        if self.M is not None:
            x = x @ self.M
        return F.linear(fq_act(x, self.abits), fq_weight(self.fused_weight(), self.wbits), self.bias)

    @torch.no_grad()
    def effective_weight(self) -> torch.Tensor:
        """The dequantized weight on the original input channels: ``Q(W' + BA) M^T``."""
        w = fq_weight(self.fused_weight(), self.wbits)
        return w @ self.M.T if self.M is not None else w
