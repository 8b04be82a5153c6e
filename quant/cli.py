"""``floe quantize`` and ``floe prune``; the server's CLI mounts them with ``register(app)``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from floe.quant.errors import QuantError

console = Console(stderr=True)


def _parse_sets(pairs: list[str]) -> dict:
    """``key=value`` pairs; values parsed as JSON when they are JSON, else kept as strings."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set expects key=value, got {pair!r}")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def _execute(kind: str, model_dir: Path, method: str, fields: dict, calibration, out, overwrite) -> None:
    from floe.quant import api
    from floe.quant.progress import progress_handler

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            overall = bar.add_task(f"{kind} {method}", total=None)
            tasks: dict[str, int] = {}

            def on_progress(task: str, done: int, total: int) -> None:
                if task not in tasks:
                    tasks[task] = bar.add_task(task, total=total)
                bar.update(tasks[task], completed=done)

            with progress_handler(on_progress):
                config = api.make_config(method, kind, **fields)  # type: ignore[arg-type]
                verb = api.quantize if kind == "quantize" else api.prune
                result = verb(model_dir, config, calibration=calibration, out=out, overwrite=overwrite)
            bar.update(overall, total=1, completed=1)
    except QuantError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    typer.echo(str(result))


# The options both commands take (typer reads these defaults as declarations).
MODEL_DIR = typer.Argument(..., help="Hugging Face model directory")
OUT = typer.Option(None, "--out", "-o", help="output dir (default <model>-<method>)")
CALIBRATION = typer.Option(None, "--calibration", help="text file, paragraphs split by blank lines")
OVERWRITE = typer.Option(False, "--overwrite", help="replace an existing output dir")
SET = typer.Option([], "--set", help="any other config field, key=value (repeatable)")


def register(app: typer.Typer) -> None:
    """Add ``quantize`` and ``prune`` commands to ``app``."""

    @app.command("quantize")
    def quantize_cmd(
        model_dir: Path = MODEL_DIR,
        method: str = typer.Option(..., "--method", "-m", help="int8 | nf4 | fp4 | gptq | rtn | qllm"),
        bits: int | None = typer.Option(None, "--bits", help="weight bits (gptq/rtn: 4, 8; qllm: 4, 6, 8)"),
        group_size: int | None = typer.Option(None, "--group-size", help="columns per scale (-1: per channel)"),
        act_bits: int | None = typer.Option(None, "--act-bits", help="qllm: simulated activation bits"),
        out: Path | None = OUT,
        calibration: Path | None = CALIBRATION,
        overwrite: bool = OVERWRITE,
        set_: list[str] = SET,
    ) -> None:
        """Quantize a checkpoint; writes the output dir with floe_quant.json."""
        fields = {"bits": bits, "group_size": group_size, "act_bits": act_bits, **_parse_sets(set_)}
        _execute("quantize", model_dir, method, fields, calibration, out, overwrite)

    @app.command("prune")
    def prune_cmd(
        model_dir: Path = MODEL_DIR,
        method: str | None = typer.Option(
            None, "--method", "-m", help="maskllm (default) | sparsegpt | wanda | magnitude"),
        mask: Path | None = typer.Option(
            None, "--mask", help="apply this floe_mask.npz (or a pruned output dir) instead of finding one"),
        steps: int | None = typer.Option(None, "--steps", help="maskllm: most training steps"),
        out: Path | None = OUT,
        calibration: Path | None = CALIBRATION,
        overwrite: bool = OVERWRITE,
        set_: list[str] = SET,
    ) -> None:
        """Prune a checkpoint to 2:4 sparsity; writes the output dir (weights, floe_mask.npz, floe_quant.json)."""
        fields = {"steps": steps, **_parse_sets(set_)}
        if mask is not None:
            if method not in (None, "mask"):
                console.print("[red]error:[/red] --mask applies a saved mask; it takes no --method")
                raise typer.Exit(code=2)
            method, fields = "mask", {"path": str(mask), **_parse_sets(set_)}
        _execute("prune", model_dir, method or "maskllm", fields, calibration, out, overwrite)
