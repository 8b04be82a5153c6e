"""`floe adapters train toolken`: fit tool tokens on chat fine-tuning JSONL with the LLM frozen."""

from __future__ import annotations

from pathlib import Path

import typer


def train_toolken(
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False,
                              help="OpenAI chat fine-tuning JSONL with `tools` and assistant `tool_calls` "
                                   "(turns without calls teach when not to call)."),
    out: Path = typer.Option(Path("toolken-adapter"), "--out", help="Adapter directory to write."),
    epochs: int = typer.Option(20, "--epochs", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    lr: float = typer.Option(0.05, "--lr"),
    weight_decay: float = typer.Option(0.0, "--weight-decay", min=0.0),
    val_fraction: float = typer.Option(0.15, "--val-fraction", min=0.0, max=0.5),
    model: Path | None = typer.Option(None, "--model", help="Base model directory (default: built-in)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Fit one embedding row per tool (frozen LLM) and write an adapter directory for `floe adapters add`."""
    from rich.console import Console

    from floe.adapters.toolken.train import TrainConfig, train_to_dir
    from floe.server.training import base_model_dir, training

    console = Console(stderr=True)
    model_dir = base_model_dir(model)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      val_fraction=val_fraction, seed=seed)
    with training(console) as progress:
        path, report = train_to_dir(model_dir, data, out, cfg, progress=progress)
    best = report["best"]
    if "val_tool_accuracy" in best:
        console.print(f"adapter written to {path}: {report['tools']} tools, validation tool-selection accuracy "
                      f"{best['val_tool_accuracy']:.0%} (fires as the greedy token {best.get('val_fires', 0):.0%}; "
                      f"chance {report['chance']:.0%}), {report['train_turns']} training turns")
    print(Path(path).resolve())
