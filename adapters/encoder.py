"""FLAME-style text encoders on the frozen LLM (METHODS.md, FLAME).

    text -> PromptEOL template -> frozen LLM -> residual stream of one layer (default: the
    second-to-last decoder layer, no final norm) at the last token -> L2-normalise

An `encoder` adapter is a directory whose `floe_adapter.json` sets the template, layer, final
norm, pooling and normalisation; it has no weights (the base model is the encoder). Without an
adapter, the base model encodes with the defaults below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from floe.adapters.base import MANIFEST, AdapterInfo, AdapterKind, EngineLimits, InvalidAdapter, register_kind

if TYPE_CHECKING:
    from floe.server.runtime.model import FrozenModel

KIND = "encoder"
FLAME_TEMPLATE = ('Image description: "{text}". After thinking step by step, this image '
                  'description means in just one word:"')


@dataclass(frozen=True)
class EncoderConfig:
    template: str = FLAME_TEMPLATE
    layer: int = -2  # 0 = embeddings, k = output of decoder layer k, -1 = last, -2 = second-to-last
    final_norm: bool = False
    pooling: Literal["last", "mean"] = "last"
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.template.count("{text}") != 1:
            raise ValueError("template must contain `{text}` exactly once")
        if self.pooling not in ("last", "mean"):
            raise ValueError("pooling must be 'last' or 'mean'")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def public(self) -> dict[str, Any]:
        return asdict(self)


def template_ids(llm: "FrozenModel", cfg: EncoderConfig, item: str | list[int]) -> list[int]:
    """Token ids of one input wrapped in the template (token arrays are spliced in as they are)."""
    prefix, suffix = cfg.template.split("{text}")
    if isinstance(item, str):
        return llm.tokenize(prefix + item + suffix)
    return llm.tokenize(prefix) + list(item) + llm.tokenize(suffix)


@torch.no_grad()
def encode(llm: "FrozenModel", cfg: EncoderConfig, items: list[str | list[int]]) -> torch.Tensor:
    """[len(items), d_llm] float32 embeddings; left padding keeps the last token at -1."""
    batch = llm.pad_ids([template_ids(llm, cfg, item) for item in items])
    (hidden,) = llm.hidden_states(batch, layers=(cfg.layer,), final_norm=cfg.final_norm)
    if cfg.pooling == "last":
        pooled = hidden[:, -1]
    else:
        mask = batch.attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    pooled = pooled.float()
    return torch.nn.functional.normalize(pooled, dim=-1) if cfg.normalize else pooled


def write(directory: Path, cfg: EncoderConfig, base_fingerprint: str | None = None,
          version: str = "1") -> Path:
    import json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).write_text(json.dumps(
        {"kind": KIND, "base_model": base_fingerprint, "version": version, "config": cfg.public()},
        indent=1))
    return directory


def load(directory: Path) -> EncoderConfig:
    return EncoderConfig.from_dict(AdapterKind.read_manifest(Path(directory)).get("config") or {})


@register_kind
class EncoderKind(AdapterKind):
    name = KIND
    capability = "hidden_states"

    def inspect(self, directory: Path, limits: EngineLimits) -> AdapterInfo:
        manifest = self.read_manifest(directory)
        try:
            cfg = EncoderConfig.from_dict(manifest.get("config") or {})
        except (TypeError, ValueError) as exc:
            raise InvalidAdapter(f"{MANIFEST}: bad encoder config: {exc}", param="source") from exc
        return AdapterInfo(kind=self.name, capability=self.capability,
                           base_model=manifest.get("base_model"), version=manifest.get("version"),
                           details=cfg.public())
