"""Fit a Time-LLM adapter with the LLM frozen (`floe adapters train timeseries`).

Windows of seq_len + horizon slide over the first `train_fraction` of every channel; the last
part is held out for validation, and the weights with the best validation loss are saved.
The loss is MSE in each window's own normalised units, so series of any scale weigh the same.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from floe.adapters.timeseries import TimeLLMConfig
from floe.adapters.timeseries.model import TimeLLM, save
from floe.server.training import Progress, TrainSettings, descend


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    train_fraction: float = 0.8


def read_csv(path: Path, columns: list[str] | None = None) -> dict[str, list[float]]:
    """Numeric columns of a CSV (header row required); non-numeric columns (dates) are skipped."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path}: no data rows")
    names = columns or list(rows[0])
    out: dict[str, list[float]] = {}
    for name in names:
        if name not in rows[0]:
            raise ValueError(f"{path}: no column {name!r}; columns: {list(rows[0])}")
        try:
            values = [float(r[name]) for r in rows]
        except (TypeError, ValueError):
            if columns:
                raise ValueError(f"{path}: column {name!r} is not numeric") from None
            continue
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{path}: column {name!r} has NaN or infinite values")
        out[name] = values
    if not out:
        raise ValueError(f"{path}: no numeric column")
    return out


def windows(series: list[list[float]], cfg: TimeLLMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """All (lookback, target) windows: [W, seq_len], [W, horizon]."""
    xs, ys = [], []
    span = cfg.seq_len + cfg.horizon
    for values in series:
        t = torch.tensor(values, dtype=torch.float32)
        for start in range(0, len(values) - span + 1):
            xs.append(t[start:start + cfg.seq_len])
            ys.append(t[start + cfg.seq_len:start + span])
    if not xs:
        raise ValueError(f"series too short for seq_len {cfg.seq_len} + horizon {cfg.horizon}")
    return torch.stack(xs), torch.stack(ys)


def normalised_mse(pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # NOTE: (pred - y) / std: the mean cancels, so only the window's scale matters.
    std = torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5)
    return torch.mean(((pred - y) / std) ** 2)


def split(series: dict[str, list[float]], cfg: TimeLLMConfig, fraction: float):
    """Train on the first `fraction` of each channel; validate on windows ending after it."""
    train, val = [], []
    for values in series.values():
        cut = int(len(values) * fraction)
        train.append(values[:cut])
        val.append(values[max(0, cut - cfg.seq_len):])
    return windows(train, cfg), windows(val, cfg)


def train(llm, series: dict[str, list[float]], cfg: TimeLLMConfig, tcfg: TrainConfig,
          progress: Progress | None = None) -> tuple[TimeLLM, dict[str, float]]:
    torch.manual_seed(tcfg.seed)
    (x_tr, y_tr), (x_va, y_va) = split(series, cfg, tcfg.train_fraction)
    net = TimeLLM(cfg, vocab_size=llm.word_embeddings.shape[0], d_llm=llm.hidden_size)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=tcfg.lr)
    steps_per_epoch = math.ceil(len(x_tr) / tcfg.batch_size)
    total, step = tcfg.epochs * steps_per_epoch, 0
    best = (float("inf"), {k: v.clone() for k, v in net.state_dict().items()})
    gen = torch.Generator().manual_seed(tcfg.seed)
    metrics: dict[str, float] = {}
    for _epoch in range(tcfg.epochs):
        net.train()
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(order), tcfg.batch_size):
            idx = order[i:i + tcfg.batch_size]
            loss = normalised_mse(net(llm, x_tr[idx]), x_tr[idx], y_tr[idx])
            metrics["train_loss"] = descend(opt, loss)
            step += 1
            if progress:
                progress(step, total, metrics)
        net.eval()
        with torch.no_grad():
            val = float(normalised_mse(net(llm, x_va), x_va, y_va))
        metrics["val_loss"] = val
        if val < best[0]:
            best = (val, {k: v.clone() for k, v in net.state_dict().items()})
        if progress:
            progress(step, total, metrics)
    net.load_state_dict(best[1])
    net.eval()
    return net, {"best_val_loss": best[0], "train_windows": len(x_tr), "val_windows": len(x_va)}


def train_to_dir(model_dir: Path, data: Path, out: Path, cfg: TimeLLMConfig, tcfg: TrainConfig,
                 columns: list[str] | None = None, progress: Progress | None = None) -> tuple[Path, dict]:
    from floe.server.runtime.model import FrozenModel

    series = read_csv(data, columns)
    llm = FrozenModel(model_dir)
    net, report = train(llm, series, cfg, tcfg, progress)
    save(out, net, llm.fingerprint, extra={"training": {**report, "data": Path(data).name,
                                                        "columns": list(series)}})
    return out, report
