"""`floe adapters train audio`: fit an APT aligner (Q-Former, projection, indicator) on chat JSONL."""

from __future__ import annotations

from pathlib import Path

import typer

from floe.server import training as options


def train_audio(
    data: Path = options.data_option(
        "OpenAI chat fine-tuning JSONL with input_audio parts; the last message "
        "of each line is the assistant's target."),
    out: Path = options.out_option("audio-adapter"),
    encoder: Path | None = typer.Option(None, "--encoder", exists=True, file_okay=False,
                                        help="An audio adapter whose frozen encoder to reuse (e.g. the demo's); "
                                             "default: a seeded, untrained encoder."),
    num_queries: int = typer.Option(32, "--num-queries", min=1, help="Learned Q-Former queries (soft tokens)."),
    qformer_dim: int = typer.Option(128, "--qformer-dim", min=8),
    qformer_layers: int = typer.Option(2, "--qformer-layers", min=1),
    max_text_tokens: int = typer.Option(64, "--max-text-tokens", min=1,
                                        help="Instruction tokens the Q-Former reads."),
    epochs: int = options.epochs_option(10),
    batch_size: int = options.BATCH_SIZE,
    lr: float = options.lr_option(2e-3),
    val_fraction: float = options.VAL_FRACTION,
    model: Path | None = options.MODEL,
    seed: int = options.SEED,
) -> None:
    """Fit an APT audio adapter (frozen LLM and encoder) and write a directory for `floe adapters add`."""
    import torch
    from rich.console import Console

    from floe.adapters.audio import AudioConfig
    from floe.adapters.audio.model import llm_width
    from floe.adapters.audio.train import TrainConfig, train_to_dir
    from floe.server.training import base_model_dir, refused, training

    console = Console(stderr=True)
    model_dir = base_model_dir(model)
    heads = 4 if qformer_dim % 4 == 0 else 1
    with refused(console):
        cfg = AudioConfig(qformer_dim=qformer_dim, qformer_heads=heads, qformer_layers=qformer_layers,
                          num_queries=num_queries, max_text_tokens=max_text_tokens, llm_hidden=llm_width(model_dir))
    torch.set_num_threads(1)
    with training(console) as progress:
        path, report = train_to_dir(model_dir, data, out, cfg,
                                    TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr,
                                                val_fraction=val_fraction, seed=seed),
                                    encoder_dir=encoder, progress=progress)
    exact = f", validation exact match {report['val_exact_match']:.0%}" if "val_exact_match" in report else ""
    console.print(f"adapter written to {path} (best validation loss {report['best_val_loss']:.4f}{exact}, "
                  f"{report['train_examples']} training examples)")
    print(path.resolve())
