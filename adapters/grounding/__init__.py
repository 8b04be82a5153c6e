"""The `grounding` kind: F-LMM, masks from the attention of a frozen vision-language model
(docs/methods.md, F-LMM; docs/grounding.md). Serves POST /v1/segmentations on the FrozenRuntime.

A grounding adapter sits on a vision adapter (LLaVA-style soft tokens for the frozen base) and
adds only a small trained mask head. The grounding pass is a teacher-forced forward of the
frozen base over the same embedding sequence vLLM generates from (the rendered chat with the
picture's soft tokens, then the answer) with eager attention; for each phrase, the attention
from its tokens to the image tokens of every layer and head, averaged over the phrase's tokens,
`[layers*heads, h, w]`, goes through a UNet-style CNN to mask logits, upsampled to the picture.

This module is torch-free (config, manifest); the pass lives in `model.py`, the head in
`head.py`, masks / boxes / RLE in `masks.py`, the phrase chunker of `prompt` mode in
`phrases.py`, COCO / RefCOCO reading in `data.py`, the trainer in `train.py` / `cli.py` and the
built-in demo in `demo.py`. An adapter directory:

    floe_adapter.json       {"kind": "grounding", "base_model": <base fingerprint>, "version",
                             "vision": {"name": <the vision adapter's served name>,
                                        "version": <its content hash>},
                             "config": {"prompt", "attention_channels", "grid", ...}}
    vision/                 the vision adapter it grounds (a copy: the adapter is self-contained)
    mask_head.safetensors   the UNet-style head (`head.py`)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from floe.server.kinds import (
    MANIFEST,
    AdapterInfo,
    EngineLimits,
    InvalidAdapter,
    KindConfig,
    RuntimeKind,
    get_kind,
    register_kind,
)

if TYPE_CHECKING:
    from floe.adapters.grounding.model import GroundingAdapter, GroundItem
    from floe.server.runtime.engine import RuntimeBackbone
    from floe.server.schemas.segmentations import GroundCall, GroundResult

KIND = "grounding"
VISION = "vision"
HEAD = "mask_head.safetensors"
HEAD_INPUT = "enc1.0.weight"  # the first conv of head.MaskHead: [channels, attention_channels, 3, 3]


@dataclass(frozen=True)
class GroundingConfig(KindConfig):
    """How phrases become masks (the manifest's `config`)."""

    attention_channels: int = 0  # layers * heads of the base: the head's input maps
    grid: tuple[int, int] = (0, 0)  # (h, w) of the image tokens
    prompt: str = "What is in the picture?"  # the question of the teacher-forced pass in `phrases` mode
    upsample: int = 4  # the head works at grid * upsample
    channels: int = 32  # the head's width
    threshold: float = 0.5  # mask = sigmoid(logits) > threshold
    max_phrases: int = 16  # phrases per request
    max_phrase_chars: int = 200

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(x) for x in self.grid))
        if self.attention_channels <= 0 or len(self.grid) != 2 or min(self.grid) <= 0:
            raise ValueError("attention_channels and grid (h, w) must be positive")
        if self.upsample <= 0 or self.channels <= 0 or self.max_phrases <= 0 or self.max_phrase_chars <= 0:
            raise ValueError("upsample, channels, max_phrases and max_phrase_chars must be positive")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must lie in (0, 1)")
        if not isinstance(self.prompt, str):
            raise ValueError("prompt must be a string")


@register_kind
class GroundingKind(RuntimeKind):
    name = KIND
    serves = ("segmentations",)
    trainer = "floe.adapters.grounding.cli:train_grounding"
    demo = "floe.adapters.grounding.demo:build"

    config = GroundingConfig
    files = (HEAD,)

    def describe(self, directory: Path, manifest: dict[str, Any], cfg: GroundingConfig,
                 limits: EngineLimits) -> AdapterInfo:
        from floe.server.kinds import safetensors_shapes

        vision = manifest.get("vision")
        if not isinstance(vision, dict) or not isinstance(vision.get("name"), str):
            raise InvalidAdapter(f"{MANIFEST}: `vision` must name the vision adapter it grounds "
                                 "({\"name\", \"version\"})", param="source")
        if not (directory / VISION).is_dir():
            raise InvalidAdapter(f"a grounding adapter needs {VISION}/ (its vision adapter)", param="source")
        seen = get_kind("vision").manifest(directory / VISION, limits)
        if seen.base_model != manifest["base_model"]:
            raise InvalidAdapter(f"{VISION}/ was made for another base than this grounding adapter",
                                 param="source")
        tokens = int(seen.details.get("tokens_per_image") or 0)
        side = int(seen.details.get("image_input_size") or 0) // int(seen.details.get("patch_size") or 1)
        if cfg.grid != (side, side) or tokens != side * side:
            raise InvalidAdapter(f"grid {list(cfg.grid)} does not fit the vision adapter's {tokens} image tokens "
                                 f"({side} x {side} patches)", param="source")
        self.require_files(directory, HEAD)
        shape = safetensors_shapes(directory / HEAD).get(HEAD_INPUT)
        if not shape or len(shape) != 4 or shape[1] != cfg.attention_channels:
            raise InvalidAdapter(f"{HEAD}: {HEAD_INPUT} must take {cfg.attention_channels} attention maps, "
                                 f"has shape {shape}", param="source")
        return self.info(manifest, **cfg.public(), vision=vision, tokens_per_image=tokens,
                         trained=manifest.get("trained"))

    # -- execution (FrozenRuntime) --------------------------------------------------------------
    def load(self, directory: Path, backbone: RuntimeBackbone, ref: Any) -> GroundingAdapter:
        from floe.adapters.grounding.model import load_for_backbone

        return load_for_backbone(Path(directory), backbone.llm)

    def prepare(self, backbone: RuntimeBackbone, loaded: GroundingAdapter, request: GroundCall) -> GroundItem:
        from floe.adapters.grounding.model import prepare

        return prepare(loaded, request)

    def run(self, backbone: RuntimeBackbone, batch: list[tuple[GroundingAdapter, GroundItem]]) -> list[Any]:
        from floe.adapters.grounding.model import run

        return run(backbone.llm, batch)

    def finish(self, out: Any) -> GroundResult:
        from floe.adapters.grounding.masks import finish

        return finish(out)

