"""Adapter kinds: what each kind is, which engine capability it needs, how it is validated.

A kind registers itself with `@register_kind`; third parties plug in through the
`floe.adapters` entry-point group. A lookup miss lists the kinds that exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

from floe.server.errors import InvalidRequest

MANIFEST = "floe_adapter.json"

# Engine capabilities an adapter kind may need (DESIGN.md).
CAPABILITIES = ("generate", "prompt_embeds", "hidden_states", "attentions", "session", "logits_head")


class InvalidAdapter(InvalidRequest):
    code = "invalid_adapter"


@dataclass(frozen=True)
class EngineLimits:
    """What the serving engine accepts; kinds validate adapters against it before loading."""

    max_lora_rank: int = 64


@dataclass(frozen=True)
class AdapterInfo:
    """What a kind found in a valid adapter directory."""

    kind: str
    capability: str
    base_model: str | None = None
    version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class AdapterKind:
    """One adapter kind. Subclasses set `name` / `capability` and implement `inspect`."""

    name: ClassVar[str]
    capability: ClassVar[str]

    def inspect(self, directory: Path, limits: EngineLimits) -> AdapterInfo:
        raise NotImplementedError  # abstract: each registered kind implements it

    @staticmethod
    def read_manifest(directory: Path) -> dict[str, Any]:
        path = directory / MANIFEST
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidAdapter(f"{MANIFEST} is not valid JSON: {exc}", param="source") from exc
        if not isinstance(data, dict):
            raise InvalidAdapter(f"{MANIFEST} must be a JSON object", param="source")
        return data


_KINDS: dict[str, AdapterKind] = {}


def register_kind(cls: type[AdapterKind]) -> type[AdapterKind]:
    if cls.capability not in CAPABILITIES:
        raise ValueError(f"{cls.__name__}: unknown capability {cls.capability!r}; known: {CAPABILITIES}")
    _KINDS[cls.name] = cls()
    return cls


def _load_plugins() -> None:
    for ep in entry_points(group="floe.adapters"):
        ep.load()


def get_kind(name: str) -> AdapterKind:
    if name not in _KINDS:
        _load_plugins()
    try:
        return _KINDS[name]
    except KeyError:
        raise InvalidAdapter(
            f"unknown adapter kind {name!r}; known kinds: {sorted(_KINDS)}", param="kind"
        ) from None


def detect_kind(directory: Path) -> str:
    """The kind named by the manifest, else `lora` for a plain PEFT LoRA directory."""
    manifest = AdapterKind.read_manifest(directory)
    if "kind" in manifest:
        return str(manifest["kind"])
    if (directory / "adapter_config.json").is_file():
        return "lora"
    raise InvalidAdapter(
        f"{directory.name}: neither {MANIFEST} nor a PEFT adapter_config.json found", param="source"
    )


def inspect_adapter(directory: Path, limits: EngineLimits) -> AdapterInfo:
    # NOTE: importing the built-in kinds registers them.
    import floe.adapters.lora  # noqa: F401
    import floe.adapters.encoder  # noqa: F401
    import floe.adapters.image_encoder  # noqa: F401
    import floe.adapters.timeseries  # noqa: F401

    return get_kind(detect_kind(directory)).inspect(directory, limits)
