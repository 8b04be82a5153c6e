"""2:4 masks: the six candidate patterns per group of four input weights, and checks."""

from __future__ import annotations

from itertools import combinations

import torch

# [6, 4]: every way to keep 2 of 4 consecutive weights along the input dimension
CANDIDATES = torch.tensor([[1.0 if j in keep else 0.0 for j in range(4)] for keep in combinations(range(4), 2)])


def groups(w: torch.Tensor) -> torch.Tensor:
    """``[out, in]`` -> ``[out, in/4, 4]``."""
    out_f, in_f = w.shape
    if in_f % 4:
        raise ValueError(f"in_features {in_f} is not a multiple of 4")
    return w.reshape(out_f, in_f // 4, 4)


def best_candidate(score: torch.Tensor) -> torch.Tensor:
    """Index ``[out, in/4]`` of the candidate keeping the largest total score per group."""
    return (groups(score) @ CANDIDATES.T).argmax(-1)


def mask_from_index(idx: torch.Tensor) -> torch.Tensor:
    """Candidate indices ``[out, in/4]`` -> 0/1 mask ``[out, in]``."""
    return CANDIDATES[idx].reshape(idx.shape[0], -1)


def topk_mask(score: torch.Tensor) -> torch.Tensor:
    """Keep the two highest-score weights of every group of four."""
    return mask_from_index(best_candidate(score))


def is_2to4(w: torch.Tensor) -> bool:
    """True iff every group of four consecutive input weights has at least two exact zeros."""
    return bool(((groups(w) == 0).sum(-1) >= 2).all())
