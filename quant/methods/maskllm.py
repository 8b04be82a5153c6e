"""MaskLLM training loop: Gumbel-softmax over the six 2:4 candidates, weights frozen."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from floe.quant.progress import report
from floe.quant.model_io import decoder_linears
from floe.quant.sparse24 import CANDIDATES, best_candidate, groups, mask_from_index, topk_mask


class GumbelMaskedLinear(nn.Module):
    """A frozen linear whose weight is multiplied by a sampled soft 2:4 mask."""

    def __init__(self, lin: nn.Linear, init_logits: torch.Tensor):
        super().__init__()
        self.lin = lin
        self.logits = nn.Parameter(init_logits)  # [out, in/4, 6]
        self.tau = 1.0
        self.scale = 1.0

    def soft_mask(self) -> torch.Tensor:
        z = self.logits * self.scale
        if self.training:
            u = torch.rand_like(z).clamp_(1e-10, 1 - 1e-10)
            z = z - torch.log(-torch.log(u))  # + Gumbel noise
        y = F.softmax(z / self.tau, dim=-1)  # [out, in/4, 6]
        return (y @ CANDIDATES).reshape(self.lin.weight.shape)

    def forward(self, x):
        return F.linear(x, self.lin.weight * self.soft_mask(), self.lin.bias)

    def hard_mask(self) -> torch.Tensor:
        return mask_from_index(self.logits.argmax(-1))


def _prior_index(model, ids: torch.Tensor, prior: str) -> dict[str, torch.Tensor | None]:
    if prior == "none":
        return {n: None for n, _ in decoder_linears(model)}
    if prior == "magnitude":
        return {n: best_candidate(lin.weight.abs()) for n, lin in decoder_linears(model)}
    from floe.quant.methods.sparsity import wanda_masks

    masks = wanda_masks(copy.deepcopy(model), ids[: min(len(ids), 32)])
    return {n: (groups(m) @ CANDIDATES.T).argmax(-1) for n, m in masks.items()}


def _swap(model, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def train_masks(model, ids: torch.Tensor, cfg) -> dict:
    """Learn masks on token windows ``ids [n, T]``; prunes ``model`` in place; returns stats."""
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    priors = _prior_index(model, ids, cfg.prior)
    wrapped: dict[str, GumbelMaskedLinear] = {}
    for name, lin in list(decoder_linears(model)):
        out_f, in_f = lin.weight.shape
        init = torch.zeros(out_f, in_f // 4, 6)
        if priors[name] is not None:  # prior candidate gets prior_strength after scaling
            init.scatter_(-1, priors[name].unsqueeze(-1), cfg.prior_strength / cfg.scale_start)
        wrapped[name] = GumbelMaskedLinear(lin, init)
        _swap(model, name, wrapped[name])
    params = [w.logits for w in wrapped.values()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, eps=cfg.adam_eps)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    model.train()
    try:
        for step in range(cfg.steps):
            frac = step / max(1, cfg.steps - 1)
            tau = cfg.tau_start + (cfg.tau_end - cfg.tau_start) * frac
            scale = cfg.scale_start + (cfg.scale_end - cfg.scale_start) * frac
            for w in wrapped.values():
                w.tau, w.scale = tau, scale
            batch = ids[torch.randint(0, len(ids), (cfg.batch_size,), generator=gen)]
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            report("maskllm steps", step + 1, cfg.steps)
    finally:
        model.eval()
        changed, total = 0, 0
        for name, w in wrapped.items():
            with torch.no_grad():
                idx = w.logits.argmax(-1)
                w.lin.weight.mul_(mask_from_index(idx))
                if priors[name] is not None:
                    changed += int((idx != priors[name]).sum())
                    total += idx.numel()
            _swap(model, name, w.lin)
        torch.set_num_threads(old_threads)
    tail = losses[-20:] or [math.nan]
    return {"steps": cfg.steps, "final_loss": sum(tail) / len(tail),
            "first_loss": losses[0] if losses else math.nan,
            "groups_changed_from_prior": changed / max(1, total)}


__all__ = ["train_masks", "GumbelMaskedLinear", "topk_mask"]
