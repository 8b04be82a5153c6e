"""MaskLLM (Fang et al. 2024): learn a 2:4 mask end to end, weights frozen.

Every group of four input weights chooses one of the six 2-of-4 candidates; the choice is a
categorical with learnable gates ``[out, in/4, 6]``, sampled with Gumbel-softmax so the LM loss
reaches the gates. As in the paper (and NVlabs/MaskLLM's scripts): gates start as a prior
mask (magnitude, Wanda or SparseGPT; ``auto`` picks the one with the lowest validation loss)
plus N(0, 0.01) noise, the prior candidate ``prior_strength`` noise-std above the rest; the
sampling logits are ``gates * scale`` with ``scale`` annealed 1e2 -> 5e2 and temperature
4 -> 0.05; the sparse-weight regulariser rewards keeping large weights (weight ``weight_reg``,
decayed linearly to 0). ``prior_reg`` adds a cross-entropy pull toward the prior candidate so
a group leaves its prior only where the loss gradient outweighs it.

Held-out discipline: the last ``val_windows`` windows of the mask-learning text are never
trained on; the argmax mask is scored on them every ``eval_every`` steps, the best one is kept
(early stop after ``patience`` evals without improvement), and then, linear by linear, the
prior replaces the learned mask wherever the learned one does not lower the validation loss.
The manifest's ``extra.maskllm`` records the prior, the steps run and which linears kept it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from floe.quant.calibration import calibrated
from floe.quant.methods.mask_priors import (
    PRIORS,
    candidate_index,
    dense_weights,
    lm_loss,
    masked_loss,
    prior_logits,
    prior_masks,
)
from floe.quant.model_io import decoder_linears
from floe.quant.progress import report
from floe.quant.registry import MethodConfig, MethodResult, register_method
from floe.quant.sparse24 import CANDIDATES, mask_from_index


class MaskLLMConfig(MethodConfig):
    """Learnable 2:4 masks; defaults follow the paper's schedules, sized for a CPU run."""

    method: Literal["maskllm"] = "maskllm"
    steps: int = Field(600, description="most optimizer steps (early stop may end sooner)")
    batch_size: int = 8
    seq_len: int = 128
    lr: float = Field(5e-4, description="AdamW learning rate of the gates (logits = gates * scale)")
    tau_start: float = 4.0
    tau_end: float = 0.05
    scale_start: float = 1e2
    scale_end: float = 5e2
    prior: Literal["auto", "magnitude", "wanda", "sparsegpt", "none"] = "auto"
    prior_strength: float = Field(3.0, description="prior candidate's head start, in gate-noise stds")
    init_std: float = Field(0.01, description="std of the gates' initial noise")
    weight_reg: float = Field(0.0, description="sparse-weight regulariser: minus this times the "
                              "kept share of each linear's squared weight norm (mean over linears)")
    prior_reg: float = Field(0.3, description="weight of the mean per-group cross-entropy of the "
                             "scaled gates toward the prior candidate (0: off)")
    num_samples: int = Field(4096, description="most mask-learning windows read from the text")
    val_windows: int = Field(32, description="windows held out of training for validation")
    eval_every: int = 50
    patience: int = Field(4, description="evals without a better validation loss before stopping")
    prior_fallback: bool = Field(True, description="keep the prior on linears the learned mask "
                                 "does not improve on validation")
    seed: int = 0
    threads: int | None = Field(None, description="torch threads while training (None: unchanged)")


class GumbelMaskedLinear(nn.Module):
    """A frozen linear whose weight is multiplied by a sampled soft 2:4 mask."""

    def __init__(self, lin: nn.Linear, gates: torch.Tensor):
        super().__init__()
        self.lin = lin
        self.gates = nn.Parameter(gates)  # [out, in/4, 6]
        self.tau, self.scale = 1.0, 1.0
        self.fixed: torch.Tensor | None = None  # a hard 0/1 mask to use instead of sampling

    def soft_mask(self) -> torch.Tensor:
        z = self.gates * self.scale
        if self.training:
            z = z - torch.log(-torch.log(torch.rand_like(z).clamp_(1e-10, 1 - 1e-10)))  # + Gumbel
        y = F.softmax(z / self.tau, dim=-1)  # [out, in/4, 6]
        return (y @ CANDIDATES).reshape(self.lin.weight.shape)  # expected 0/1 per weight

    def forward(self, x):
        # NOTE: self.mask is kept for the sparse-weight regulariser
        self.mask = self.fixed if self.fixed is not None else self.soft_mask()
        return F.linear(x, self.lin.weight * self.mask, self.lin.bias)

    def hard_index(self) -> torch.Tensor:
        return self.gates.detach().argmax(-1)  # [out, in/4]


def _swap(model, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def choose_prior(model, train_ids, val_ids, cfg) -> tuple[str, dict, dict[str, float]]:
    """(prior name, its keep masks, validation loss of each candidate prior)."""
    kinds = PRIORS if cfg.prior == "auto" else (cfg.prior,)
    dense = dense_weights(model)
    calib = train_ids[: min(len(train_ids), 64)]
    found = {k: prior_masks(model, calib, k) for k in kinds}
    losses = {k: masked_loss(model, dense, m, val_ids) for k, m in found.items()}
    for name, lin in decoder_linears(model):
        lin.weight.data = dense[name]
    best = min(losses, key=losses.get)
    return best, found[best], losses


def _wrap(model, prior, cfg: MaskLLMConfig, gen) -> tuple[dict[str, GumbelMaskedLinear], dict]:
    """Swap every decoder linear for a GumbelMaskedLinear; (wrappers, prior candidate indices)."""
    wrapped, prior_idx = {}, {}
    for name, lin in list(decoder_linears(model)):
        out_f, in_f = lin.weight.shape
        if prior is None:  # no prior: candidate 0 stands in, gates are pure noise
            prior_idx[name] = torch.zeros(out_f, in_f // 4, dtype=torch.long)
            gates = torch.randn(out_f, in_f // 4, 6, generator=gen) * cfg.init_std
        else:
            prior_idx[name] = candidate_index(prior[name])
            gates = prior_logits(prior_idx[name], cfg.prior_strength, cfg.init_std, gen)
        wrapped[name] = GumbelMaskedLinear(lin, gates)
        _swap(model, name, wrapped[name])
    return wrapped, prior_idx


def _regularisers(wrapped, prior_idx, cfg: MaskLLMConfig, frac: float, has_prior: bool):
    """Sparse-weight reward (fading out over training) and the pull toward the prior; scalars."""
    reg = torch.zeros(())
    if cfg.weight_reg:  # kept share of each linear's squared weight norm, mean over linears
        kept = sum((w.lin.weight * w.mask).pow(2).sum() / w.lin.weight.pow(2).sum() for w in wrapped.values())
        reg = reg - cfg.weight_reg * (1 - frac) * kept / len(wrapped)
    if cfg.prior_reg and has_prior:  # mean per-group cross-entropy of the scaled gates vs the prior
        ce = sum(F.cross_entropy((w.gates * w.scale).reshape(-1, 6), prior_idx[n].reshape(-1))
                 for n, w in wrapped.items())
        reg = reg + cfg.prior_reg * ce / len(wrapped)
    return reg


def train_masks(model, ids: torch.Tensor, cfg: MaskLLMConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """Learn masks on windows ``ids [n, T]``; prunes ``model`` in place; (keep masks, stats)."""
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_val = min(cfg.val_windows, len(ids) // 4)
    train_ids, val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val:]  # val: the text's tail
    for p in model.parameters():
        p.requires_grad_(False)
    t0 = time.time()
    prior_name, prior, prior_losses = ("none", None, {}) if cfg.prior == "none" else \
        choose_prior(model, train_ids, val_ids, cfg)
    wrapped, prior_idx = _wrap(model, prior, cfg, gen)
    opt = torch.optim.AdamW([w.gates for w in wrapped.values()], lr=cfg.lr, weight_decay=0.0)

    def hard() -> dict[str, torch.Tensor]:
        return {n: w.hard_index() for n, w in wrapped.items()}

    def val_of(index: dict[str, torch.Tensor]) -> float:
        for n, w in wrapped.items():
            w.fixed = mask_from_index(index[n])
        model.eval()
        loss = lm_loss(model, val_ids)
        for w in wrapped.values():
            w.fixed = None
        return loss

    prior_val = val_of(prior_idx) if prior is not None else math.inf
    best_val, best_idx, best_step, stale, history, step = prior_val, dict(prior_idx), 0, 0, [], 0
    try:
        for step in range(1, cfg.steps + 1):
            frac = (step - 1) / max(1, cfg.steps - 1)  # linear schedules, as in the paper
            for w in wrapped.values():
                w.tau = cfg.tau_start + (cfg.tau_end - cfg.tau_start) * frac
                w.scale = cfg.scale_start + (cfg.scale_end - cfg.scale_start) * frac
            model.train()
            batch = train_ids[torch.randint(0, len(train_ids), (cfg.batch_size,), generator=gen)]
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            loss = loss + _regularisers(wrapped, prior_idx, cfg, frac, prior is not None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            report("maskllm steps", step, cfg.steps)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                v = val_of(hard())
                history.append((step, round(v, 4)))
                best_val, best_idx, best_step, stale = (v, hard(), step, 0) if v < best_val else \
                    (best_val, best_idx, best_step, stale + 1)
                if stale >= cfg.patience:
                    break
        learned_val, kept_prior = best_val, []
        if cfg.prior_fallback and prior is not None:
            for n in wrapped:  # greedy, one linear at a time, against the current combination
                trial = {**best_idx, n: prior_idx[n]}
                if not torch.equal(trial[n], best_idx[n]) and (v := val_of(trial)) <= best_val:
                    best_idx, best_val = trial, v
                    kept_prior.append(n)
    finally:
        model.eval()
        for n, w in wrapped.items():
            _swap(model, n, w.lin)
        torch.set_num_threads(old_threads)
    masks = {n: mask_from_index(best_idx[n]) for n in wrapped}
    for n, lin in decoder_linears(model):
        lin.weight.data.mul_(masks[n])
    changed = sum(int((best_idx[n] != prior_idx[n]).sum()) for n in wrapped)
    stats = {
        "prior": prior_name, "prior_val_losses": {k: round(v, 4) for k, v in prior_losses.items()},
        "steps_run": step, "best_step": best_step, "val_windows": int(n_val),
        "val_loss_prior": round(prior_val, 4), "val_loss_learned": round(learned_val, 4),
        "val_loss_final": round(best_val, 4), "val_history": history, "linears_kept_prior": kept_prior,
        "groups_changed_from_prior": changed / max(1, sum(i.numel() for i in best_idx.values())),
        "train_windows": int(len(train_ids)), "seconds": round(time.time() - t0, 1),
    }
    return masks, stats


@register_method("maskllm", kind="prune", config=MaskLLMConfig, needs_calibration=True)
def _run_maskllm(model_dir: Path, cfg: MaskLLMConfig, texts, work_dir: Path) -> MethodResult:
    from floe.quant.methods.sparsity import finish

    model, ids = calibrated(model_dir, texts, cfg)
    masks, stats = train_masks(model, ids, cfg)
    return finish(model, model_dir, work_dir, masks, {"maskllm": stats}, method="maskllm")
