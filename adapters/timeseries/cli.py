"""`floe adapters train timeseries`: fit a Time-LLM adapter on a CSV with the base LLM frozen."""

from __future__ import annotations

from pathlib import Path

import typer

from floe.server import training as options


def train_timeseries(
    data: Path = options.data_option("CSV with a header row."),
    horizon: int = typer.Option(..., "--horizon", min=1, help="Steps to forecast."),
    out: Path = options.out_option("timeseries-adapter"),
    column: list[str] = typer.Option([], "--column", help="Numeric column(s) to train on (default: all)."),
    seq_len: int = typer.Option(48, "--seq-len", min=2, help="Lookback (points) the adapter reads."),
    patch_len: int = typer.Option(16, "--patch-len", min=1),
    stride: int = typer.Option(8, "--stride", min=1),
    epochs: int = options.epochs_option(10),
    batch_size: int = options.BATCH_SIZE,
    lr: float = options.lr_option(1e-3),
    description: str = typer.Option("A univariate time series.", "--description",
                                    help="Dataset description in the prompt."),
    model: Path | None = options.MODEL,
    seed: int = options.SEED,
) -> None:
    """Fit a Time-LLM adapter (frozen LLM) and write an adapter directory for `floe adapters add`."""
    from rich.console import Console

    from floe.adapters.timeseries import TimeLLMConfig
    from floe.adapters.timeseries.train import TrainConfig, train_to_dir
    from floe.server.training import base_model_dir, refused, training

    console = Console(stderr=True)
    with refused(console):
        cfg = TimeLLMConfig(seq_len=seq_len, horizon=horizon, patch_len=patch_len, stride=stride,
                            description=description)
    model_dir = base_model_dir(model)
    with training(console) as progress:
        path, report = train_to_dir(model_dir, data, out, cfg,
                                    TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
                                    columns=column or None, progress=progress)
    console.print(f"adapter written to {path} (best validation loss {report['best_val_loss']:.4f}, "
                  f"{report['train_windows']} training windows)")
    print(path.resolve())
