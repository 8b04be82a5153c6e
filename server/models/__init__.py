"""Base model resolution: a user's Hugging Face directory or a built-in model built offline."""

from __future__ import annotations

import json
from pathlib import Path

from floe.server.config import FloeConfig
from floe.server.errors import InvalidRequest


def resolve_base_model(config: FloeConfig) -> tuple[Path, str]:
    """(directory, served name) of the base model; builds the built-in one on first use. A
    checkpoint an adapter kind claims (e.g. LLaVA) is split once: its text LLM is the base,
    served as `<name>-text`, and `checkpoint_adapter` gives the adapter served as `<name>`."""
    if config.model.path is not None:
        path = Path(config.model.path).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise InvalidRequest(f"{path}: not a Hugging Face model directory (no config.json)")
        name = config.model.name or path.name
        split = split_checkpoint(path, config.resolved_cache_dir())
        if split is not None:
            return split[0], f"{name}-text"
        return path, name
    from floe.server.models.builtin import prepare

    path = prepare(config.model.builtin, config.resolved_cache_dir())
    return path, config.model.name or config.model.builtin


def quant_manifest(path: Path) -> dict | None:
    """The `floe_quant.json` that floe.quant writes next to a quantized checkpoint, if any."""
    manifest = path / "floe_quant.json"
    return json.loads(manifest.read_text()) if manifest.is_file() else None


def split_checkpoint(path: Path, cache: Path) -> tuple[Path, Path] | None:
    """(text LLM dir, adapter dir) when a registered kind claims the checkpoint's architecture."""
    from importlib import import_module

    from floe.server.kinds import get_kind, known_kinds

    architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    for kind in known_kinds():
        for architecture, spec in get_kind(kind).splits.items():
            if architecture in architectures:
                module, _, function = spec.partition(":")
                return getattr(import_module(module), function)(path, cache)
    return None


def checkpoint_adapter(config: FloeConfig) -> dict[str, Path]:
    """{served name: adapter dir} of a split checkpoint (empty for a plain LLM or the built-in)."""
    if config.model.path is None:
        return {}
    path = Path(config.model.path).expanduser().resolve()
    split = split_checkpoint(path, config.resolved_cache_dir())
    return {config.model.name or path.name: split[1]} if split else {}
