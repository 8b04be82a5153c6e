"""`floe adapters train grounding`: fit a grounding adapter's mask head on a RefCOCO-style set, LMM frozen."""

from __future__ import annotations

from pathlib import Path

import typer


def train_grounding(
    data: Path = typer.Option(..., "--data", exists=True, file_okay=False,
                              help="A folder with annotations.json (COCO instances + RefCOCO-style `refs`) "
                                   "and images/."),
    out: Path = typer.Option(Path("grounding-adapter"), "--out", help="Adapter directory to write."),
    vision: Path | None = typer.Option(None, "--vision", exists=True, file_okay=False,
                                       help="The vision adapter to ground (default: the built-in demo-vision)."),
    vision_name: str | None = typer.Option(None, "--vision-name",
                                           help="The name that vision adapter is served under (`prompt` mode "
                                                "asks it; default: demo-vision, or the --vision folder's name)."),
    epochs: int = typer.Option(16, "--epochs", min=1),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    lr: float = typer.Option(3e-3, "--lr"),
    channels: int = typer.Option(16, "--channels", min=8, help="The mask head's width."),
    prompt: str = typer.Option("What is in the picture?", "--prompt",
                               help="The question each referring expression answers in the teacher-forced pass."),
    projector: str = typer.Option(
        "auto", "--projector", help="tune: also fit the adapter's copy of the vision projector through the frozen "
        "LLM's attention (for a base whose attention does not ground, like the built-in one); freeze: F-LMM's "
        "frozen LMM, only the head trains; auto: tune on a floe built-in base, freeze on any other."),
    model: Path | None = typer.Option(None, "--model", help="Base model directory (default: built-in)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Fit a grounding adapter (frozen LLM, trained mask head) and write its directory for `floe adapters add`."""
    from rich.console import Console

    from floe.adapters.grounding.train import TrainConfig, train_to_dir
    from floe.server.training import base_model_dir, training

    console = Console(stderr=True)
    if projector not in ("auto", "tune", "freeze"):
        raise typer.BadParameter("must be auto, tune or freeze", param_hint="--projector")
    model_dir = base_model_dir(model)
    if vision is None:
        from floe.adapters.grounding.demo import vision_demo

        vision, name = vision_demo(model_dir), vision_name or "demo-vision"
    else:
        name = vision_name or vision.resolve().name
    # a floe built-in base (seeded random weights: `floe_built.json`) has no grounding in its attention
    tune = projector == "tune" or (projector == "auto" and (model_dir / "floe_built.json").is_file())
    tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, channels=channels, prompt=prompt,
                       tune_projector=tune)
    with training(console) as progress:
        path, report = train_to_dir(model_dir, data, out, vision, name, tcfg, progress=progress)
    console.print(f"adapter written to {path} (validation mIoU {report['val_miou']:.3f} at threshold "
                  f"{report['threshold']}; union of the "
                  f"image's objects {report['val_union_miou']:.3f}; {report['train_pairs']} training pairs)")
    print(Path(path).resolve())
