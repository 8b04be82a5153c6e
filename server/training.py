"""What every kind's `floe adapters train <kind>` command shares: the base model it trains
against, the settings every fit has, OpenAI chat fine-tuning JSONL, a progress bar, and bad
input as a clear error with exit status 2."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

Progress = Callable[[int, int, dict[str, float]], None]  # (step, total, metrics)

# Options every `floe adapters train <kind>` command takes: typer reads a parameter's default as
# its declaration, so one declaration serves every trainer.
MODEL = typer.Option(None, "--model", help="Base model directory (default: built-in).")
SEED = typer.Option(0, "--seed")
BATCH_SIZE = typer.Option(16, "--batch-size", min=1)
VAL_FRACTION = typer.Option(0.1, "--val-fraction", min=0.0, max=0.5,
                            help="Share of the data held out for validation.")


def data_option(help: str) -> Any:
    return typer.Option(..., "--data", exists=True, dir_okay=False, help=help)


def out_option(default: str) -> Any:
    return typer.Option(Path(default), "--out", help="Adapter directory to write.")


def epochs_option(default: int) -> Any:
    return typer.Option(default, "--epochs", min=1)


def lr_option(default: float) -> Any:
    return typer.Option(default, "--lr", help="Learning rate.")


@dataclass(frozen=True)
class TrainSettings:
    """What every trainer takes; a kind's `TrainConfig` subclasses it (its own defaults, more
    fields)."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0


def chat_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line number, record)` of an OpenAI chat fine-tuning JSONL file: one `{"messages": [...],
    "tools"?: [...]}` per line, blank lines skipped. A line without a non-empty list of message
    objects, or a file without any line, is a ValueError naming the file and line."""
    seen = False
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            messages = record["messages"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: expected {{\"messages\": [...]}}") from exc
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ValueError(f"{path}:{n}: \"messages\" must be a non-empty list of message objects")
        seen = True
        yield n, record
    if not seen:
        raise ValueError(f"{path}: no conversations")


def base_model_dir(model: Path | None) -> Path:
    """The base checkpoint a trainer freezes: `--model`, else the built-in one (built if needed)."""
    from floe.server.config import load_config
    from floe.server.models import resolve_base_model

    directory, _ = resolve_base_model(load_config(None, {"model": {"path": str(model)}} if model else {}))
    return directory


def descend(opt: Any, loss: Any, *, sched: Any = None, clip: Any = None, max_norm: float = 1.0) -> float:
    """One optimiser step on `loss` (gradient norm of the `clip` parameters capped at `max_norm`,
    then the schedule's step); the loss as a float, for the progress line."""
    opt.zero_grad()
    loss.backward()
    if clip is not None:
        import torch

        torch.nn.utils.clip_grad_norm_(clip, max_norm)
    opt.step()
    if sched is not None:
        sched.step()
    return float(loss.detach())


@contextmanager
def training(console: Any) -> Iterator[Progress]:
    """A progress bar (steps, ETA, the latest metrics) for a trainer's `progress` callback; a
    ValueError raised inside (bad data or options) is printed and exits with status 2."""
    from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn("[bold cyan]training[/]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
             TextColumn("{task.fields[metrics]}"), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("train", total=None, metrics="")

        def progress(step: int, total: int, metrics: dict[str, float]) -> None:
            bar.update(task, completed=step, total=total,
                       metrics=" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

        with refused(console):
            yield progress


@contextmanager
def refused(console: Any) -> Iterator[None]:
    """A ValueError (bad data or options) -> the message in red and exit status 2."""
    try:
        yield
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
