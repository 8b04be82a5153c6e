"""Base model resolution: a user's Hugging Face directory or a built-in model built offline."""

from __future__ import annotations

import json
from pathlib import Path

from floe.server.config import FloeConfig
from floe.server.errors import InvalidRequest


def resolve_base_model(config: FloeConfig) -> tuple[Path, str]:
    """(directory, served name) of the base model; builds the built-in one on first use."""
    if config.model.path is not None:
        path = Path(config.model.path).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise InvalidRequest(f"{path}: not a Hugging Face model directory (no config.json)")
        return path, config.model.name or path.name
    from floe.server.models.builtin import prepare

    path = prepare(config.model.builtin, config.resolved_cache_dir())
    return path, config.model.name or config.model.builtin


def quant_manifest(path: Path) -> dict | None:
    """The `floe_quant.json` that floe.quant writes next to a quantized checkpoint, if any."""
    manifest = path / "floe_quant.json"
    return json.loads(manifest.read_text()) if manifest.is_file() else None
