"""The `floe` command."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(help="floe: serve frozen models as APIs, adapters hot-swapped per request.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Built-in models.", no_args_is_help=True)
adapters_app = typer.Typer(help="Manage adapters on a running server.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(adapters_app, name="adapters")
console = Console(stderr=True)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


@app.command()
def serve(
    model: Path | None = typer.Option(None, help="Hugging Face-format model directory (default: built-in)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file."),
    host: str | None = typer.Option(None, help="Listen address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Listen port (default 8000)."),
    adapter_root: list[Path] = typer.Option([], "--adapter-root", help="Allowed adapter source root (repeatable)."),
    api_key: list[str] = typer.Option([], "--api-key", help="Accepted API key (repeatable)."),
    admin_key: str | None = typer.Option(None, help="Key required for the adapter API."),
    engine_replicas: int | None = typer.Option(None, help="LLMServer replicas."),
    max_model_len: int | None = typer.Option(None, help="Context length."),
    ray_address: str | None = typer.Option(None, help="Join this Ray cluster instead of starting one."),
    num_cpus: int | None = typer.Option(None, help="CPUs of the local Ray instance."),
) -> None:
    """Start the OpenAI-compatible server (Ray Serve gateway + vLLM engine)."""
    from pydantic import ValidationError

    from floe.server.config import load_config
    from floe.server.launcher import StartupError, serve_forever

    overrides: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None or value == []:
            return
        node = overrides
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    put("model.path", str(model) if model else None)
    put("http.host", host)
    put("http.port", port)
    put("adapters.roots", [str(p) for p in adapter_root])
    put("auth.api_keys", api_key)
    put("auth.admin_key", admin_key)
    put("deployment.engine_replicas", engine_replicas)
    put("engine.max_model_len", max_model_len)
    put("ray.address", ray_address)
    put("ray.num_cpus", num_cpus)
    try:
        cfg = load_config(config, overrides)
    except (ValidationError, ValueError, OSError) as exc:
        _fail(f"invalid configuration: {exc}")
    try:
        serve_forever(cfg, progress=lambda msg: console.print(
            "[bold cyan]floe[/bold cyan] " + escape(msg), soft_wrap=True, highlight=False))
    except StartupError as exc:
        _fail(str(exc))


@models_app.command("prepare")
def models_prepare(name: str = typer.Option("floe-tiny-chat", help="Built-in model to build.")) -> None:
    """Build a built-in model offline (once) and print its directory."""
    from floe.server.models.builtin import BUILTIN_MODELS, prepare

    if name not in BUILTIN_MODELS:
        _fail(f"unknown built-in model {name!r}; built-in: {', '.join(sorted(BUILTIN_MODELS))}")
    with console.status(f"building {name}..."):
        path = prepare(name)
    print(path)


_URL = typer.Option(os.environ.get("FLOE_URL", "http://127.0.0.1:8000"), "--url", help="Server URL ($FLOE_URL).")
_KEY = typer.Option(os.environ.get("FLOE_ADMIN_KEY"), "--admin-key", help="Admin key ($FLOE_ADMIN_KEY).")


def _admin(url: str, key: str | None, action) -> None:
    """Run `action(floe.adapters)` with the SDK and print its answer as JSON; errors exit 1."""
    from floe.client import APIConnectionError, APIStatusError, Floe

    try:
        with Floe(url, admin_key=key, timeout=600) as floe:
            print(action(floe.adapters).model_dump_json(indent=2))
    except APIStatusError as exc:
        _fail(f"{exc.status_code}: {exc.message}")
    except APIConnectionError as exc:
        _fail(f"cannot reach {url}: {exc}")


@adapters_app.command("add")
def adapters_add(name: str, source: str, url: str = _URL, admin_key: str | None = _KEY) -> None:
    """Register (or replace) adapter NAME from SOURCE, a directory under an allowed root."""
    path = Path(source).expanduser()
    _admin(url, admin_key, lambda adapters: adapters.add(name, str(path.resolve()) if path.exists() else source))


@adapters_app.command("list")
def adapters_list(url: str = _URL, admin_key: str | None = _KEY) -> None:
    """List registered adapters."""
    _admin(url, admin_key, lambda adapters: adapters.list())


@adapters_app.command("rm")
def adapters_rm(name: str, url: str = _URL, admin_key: str | None = _KEY) -> None:
    """Remove adapter NAME; waits for its in-flight requests to finish."""
    _admin(url, admin_key, lambda adapters: adapters.delete(name))


def _mount_plugins() -> None:
    """Commands of the other floe packages (quantize / prune), when installed."""
    try:
        from floe.quant.cli import register
    except ImportError:
        return
    register(app)


def _mount_trainers(argv: list[str]) -> None:
    """`floe adapters train <kind>`: every kind that declares a trainer brings its command. The
    trainers' modules load only for that verb, so a kind's trainer never slows (or breaks) the
    others (`floe serve` among them)."""
    from importlib import import_module

    from floe.server.kinds import get_kind, known_kinds

    train_app = typer.Typer(help="Train adapters offline (the base model stays frozen).",
                            no_args_is_help=True)
    adapters_app.add_typer(train_app, name="train")
    if argv[:2] != ["adapters", "train"]:
        return
    for name in known_kinds():
        trainer = get_kind(name).trainer
        if trainer:
            module, _, function = trainer.partition(":")
            train_app.command(name)(getattr(import_module(module), function))


def main() -> None:
    _mount_plugins()
    _mount_trainers(sys.argv[1:])
    app(prog_name="floe")


if __name__ == "__main__":
    sys.exit(main())
