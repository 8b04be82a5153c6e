"""Shared set-up for tests/runtime and tests/adapters: the tiny base, a tiny trained Time-LLM."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from floe.adapters.timeseries import TimeLLMConfig

TINY_TS = TimeLLMConfig(seq_len=24, horizon=6, patch_len=8, stride=4, d_model=16, n_heads=2,
                        d_ff=16, num_prototypes=32, description="Synthetic seasonal test series.")


def seasonal(n: int, phase: float = 0.0, level: float = 10.0) -> list[float]:
    return [level + 0.05 * t + 3 * math.sin(2 * math.pi * t / 12 + phase) for t in range(n)]


def train_tiny_adapter(llm, out: Path) -> Path:
    """A real (one short epoch) Time-LLM fit on synthetic seasonal series, saved as an adapter."""
    from floe.adapters.timeseries.model import save
    from floe.adapters.timeseries.train import TrainConfig, train

    torch.set_num_threads(1)
    series = {f"s{i}": seasonal(60, phase=i) for i in range(2)}
    net, _ = train(llm, series, TINY_TS, TrainConfig(epochs=1, batch_size=16))
    return save(out, net, llm.fingerprint)
