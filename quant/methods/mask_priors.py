"""Prior masks for MaskLLM and the validation loss every mask choice is judged by."""

from __future__ import annotations

import copy

import torch

from floe.quant.model_io import decoder_linears
from floe.quant.sparse24 import CANDIDATES, groups

PRIORS = ("magnitude", "wanda", "sparsegpt")


def prior_masks(model, ids: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    """Keep masks ``{name: [out, in]}`` of a one-shot method; ``model`` is left untouched.

    Only the mask is taken: MaskLLM applies it to the original (frozen) weights, so
    SparseGPT's weight update is discarded here, as in the paper.
    """
    from floe.quant.methods.sparsegpt import SparseGPTConfig, run_sparsegpt
    from floe.quant.methods.sparsity import magnitude_masks, wanda_masks

    if kind == "magnitude":
        return magnitude_masks(model)
    work = copy.deepcopy(model)
    if kind == "wanda":
        return wanda_masks(work, ids)
    if kind == "sparsegpt":
        return run_sparsegpt(work, ids, SparseGPTConfig())
    raise ValueError(f"unknown prior {kind!r}")


def candidate_index(mask: torch.Tensor) -> torch.Tensor:
    """0/1 keep mask ``[out, in]`` -> index ``[out, in/4]`` of the candidate it equals."""
    return (groups(mask.float()) @ CANDIDATES.T).argmax(-1)  # overlap 2 only for itself


def prior_logits(idx: torch.Tensor, strength: float, init_std: float, gen: torch.Generator) -> torch.Tensor:
    """MaskLLM's initial gates ``[out, in/4, 6]`` from a prior candidate index ``[out, in/4]``.

    Gates start as N(0, init_std); each candidate then moves by ``(overlap - 1) * std * strength``
    where ``overlap`` in {0, 1, 2} counts the weights it keeps in common with the prior: the
    prior itself gains ``strength`` standard deviations, disjoint candidates lose as many.
    """
    gates = torch.randn(*idx.shape, 6, generator=gen) * init_std
    overlap = CANDIDATES[idx] @ CANDIDATES.T  # [out, in/4, 6]
    return gates + (overlap - 1.0) * gates.std() * strength


@torch.no_grad()
def lm_loss(model, ids: torch.Tensor, batch: int = 16) -> float:
    """Mean next-token loss over windows ``ids [n, T]`` (every window the same weight)."""
    total = 0.0
    for i in range(0, len(ids), batch):
        chunk = ids[i:i + batch]
        total += model(input_ids=chunk, labels=chunk, use_cache=False).loss.item() * len(chunk)
    return total / max(1, len(ids))


@torch.no_grad()
def masked_loss(model, dense: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                ids: torch.Tensor) -> float:
    """Validation loss of ``model`` with ``masks`` applied to the dense weights ``dense``."""
    mods = dict(model.named_modules())
    for name, m in masks.items():
        mods[name].weight.data = dense[name] * m
    return lm_loss(model, ids)


def dense_weights(model) -> dict[str, torch.Tensor]:
    return {n: lin.weight.data.clone() for n, lin in decoder_linears(model)}
