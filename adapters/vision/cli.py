"""`floe adapters train vision`: fit a vision adapter's projector on chat JSONL, LLM and tower frozen."""

from __future__ import annotations

from pathlib import Path

import typer

from floe.server import training as options


def train_vision(
    data: Path = options.data_option(
        "OpenAI chat fine-tuning JSONL: user turns with image_url parts, the "
        "target in the last assistant turn."),
    out: Path = options.out_option("vision-adapter"),
    tower: Path | None = typer.Option(None, "--tower", exists=True, file_okay=False,
                                      help="A Hugging Face vision model dir (CLIP / SigLIP / ViT), or a vision "
                                           "adapter whose tower to reuse (default: a seeded tiny CLIP tower)."),
    image_root: Path | None = typer.Option(None, "--image-root", exists=True, file_okay=False,
                                           help="Image files named in the data must lie under it "
                                                "(default: the data file's folder)."),
    epochs: int = options.epochs_option(10),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1),
    batch_size: int = options.BATCH_SIZE,
    lr: float = options.lr_option(3e-3),
    val_fraction: float = options.VAL_FRACTION,
    train_tower: bool = typer.Option(False, "--train-tower/--freeze-tower",
                                     help="Also fit the tower (the default keeps it frozen)."),
    recipe: str = typer.Option("auto", "--recipe",
                               help="end_to_end: the answers' cross-entropy through the frozen LLM; distill: "
                                    "soft tokens per distinct answer first, then the adapter regressed onto "
                                    "them (for label-like answers); auto: distill when answers repeat."),
    distill_steps: int = typer.Option(200, "--distill-steps", min=1),
    model: Path | None = options.MODEL,
    seed: int = options.SEED,
) -> None:
    """Fit a vision adapter (frozen LLM) and write an adapter directory for `floe adapters add`."""
    from rich.console import Console

    from floe.adapters.vision.train import TrainConfig, train_to_dir
    from floe.server.training import base_model_dir, training

    console = Console(stderr=True)
    if recipe not in ("auto", "distill", "end_to_end"):
        console.print("[red]error:[/red] --recipe must be auto, distill or end_to_end")
        raise typer.Exit(2)
    model_dir = base_model_dir(model)
    tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, tower_lr=lr / 3, train_tower=train_tower,
                       val_fraction=val_fraction, max_steps=max_steps, seed=seed, recipe=recipe,
                       distill_steps=distill_steps)
    with training(console) as progress:
        path, report = train_to_dir(model_dir, data, out, tcfg, tower=tower, image_root=image_root,
                                    progress=progress)
    if "best_val_loss" in report:
        console.print(f"adapter written to {path} (best validation loss {report['best_val_loss']:.4f}, "
                      f"validation exact match {report['val_exact_match']:.0%}, "
                      f"{report['train_conversations']} training conversations)")
    print(Path(path).resolve())
