"""Figures every method reports: held-out perplexity, weight MiB, decode tokens/s."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch


@torch.no_grad()
def perplexity(model, tokenizer, text: str, seq_len: int = 128, max_windows: int | None = None) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of ``seq_len`` tokens."""
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    n = len(ids) // seq_len
    if max_windows:
        n = min(n, max_windows)
    nll, count = 0.0, 0
    for i in range(0, n, 8):
        batch = ids[i * seq_len: min(n, i + 8) * seq_len].view(-1, seq_len)
        logits = model(input_ids=batch).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        nll += loss.item()
        count += batch[:, 1:].numel()
    return math.exp(nll / count)


@torch.no_grad()
def decode_tokens_per_s(model, tokenizer, prompt: str = "The for statement", new_tokens: int = 64,
                        repeats: int = 3) -> float:
    """Greedy decode speed, batch 1; best of ``repeats`` runs (the CPU may be shared)."""
    ids = tokenizer(prompt, return_tensors="pt")
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
              pad_token_id=tokenizer.pad_token_id)
    model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.generate(**ids, **kw)
        best = min(best, time.perf_counter() - t0)
    return new_tokens / best


def weight_mib(model_dir: Path) -> float:
    """Size of the checkpoint's weight files on disk, MiB."""
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")) / 2**20
