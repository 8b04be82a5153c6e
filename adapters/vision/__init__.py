"""The `vision` kind: LLaVA-1.5 images in chat (docs/methods.md, LLaVA-1.5; docs/vision.md).

A frozen Hugging Face vision tower (CLIP, SigLIP, ViT) and a two-layer MLP projector turn each
`image_url` content part into one soft token per patch, which vLLM splices into the rendered
chat template as a `prompt_embeds` part. This module is torch-free (manifest, config); the
network lives in `model.py`, image decoding in `images.py`, the vLLM-equivalent chat rendering
in `chat.py`, the LLaVA checkpoint split in `llava.py`, the trainer in `train.py` / `cli.py`
and the built-in demo in `demo.py`.

An adapter directory:

    floe_adapter.json       {"kind": "vision", "base_model": <base fingerprint>, "version",
                             "config": {"feature_layer": -2, "select_strategy": "default",
                                        "image_size", "mean", "std", "image_token", ...}}
    tower/                  a Hugging Face vision model (config.json, *.safetensors; optional
                            preprocessor_config.json, then its PIL image processor is used)
    projector.safetensors   LLaVA's `multi_modal_projector`: linear_1.{weight,bias},
                            linear_2.{weight,bias}
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from floe.server.kinds import InvalidAdapter, KindConfig, SoftTokenKind, register_kind, safetensors_shapes

if TYPE_CHECKING:
    from floe.adapters.vision.model import VisionAdapter
    from floe.server.kinds import AdapterInfo, EngineLimits

KIND = "vision"
TOWER = "tower"
PROJECTOR = "projector.safetensors"
# default: drop the tower's CLS token when it has one; full: keep every token; drop_first: drop
# token 0 whatever it is (what LlavaForConditionalGeneration's "default" does, also to CLS-less towers)
SELECT_STRATEGIES = ("default", "full", "drop_first")
PROJECTOR_KEYS = ("linear_1.weight", "linear_2.weight")


@dataclass(frozen=True)
class VisionConfig(KindConfig):
    """How a tower's output becomes soft tokens (LLaVA-1.5 semantics by default)."""

    feature_layer: int | tuple[int, ...] = -2  # hidden_states index (0 = embeddings); several concat
    select_strategy: str = "default"
    projector_act: str = "gelu"
    image_size: int | None = None  # square resize when the tower has no preprocessor_config.json
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_token: str | None = None  # a LLaVA checkpoint's image token: refused in request text

    def __post_init__(self) -> None:
        layer = self.feature_layer
        if isinstance(layer, list | tuple):
            if not layer or not all(isinstance(x, int) and not isinstance(x, bool) for x in layer):
                raise ValueError("feature_layer must be an integer or a non-empty list of integers")
            object.__setattr__(self, "feature_layer", tuple(layer))
        elif not isinstance(layer, int) or isinstance(layer, bool):
            raise ValueError("feature_layer must be an integer or a list of integers")
        if self.select_strategy not in SELECT_STRATEGIES:
            raise ValueError(f"select_strategy must be one of {SELECT_STRATEGIES}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size <= 0):
            raise ValueError("image_size must be a positive integer")
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError("mean and std need 3 values (R, G, B), std positive")

    @property
    def layers(self) -> tuple[int, ...]:
        return self.feature_layer if isinstance(self.feature_layer, tuple) else (self.feature_layer,)




def tower_geometry(tower_cfg: dict[str, Any]) -> tuple[int, int, int, int]:
    """(hidden_size, num_hidden_layers, image_size, patch_size) of a tower's config.json."""
    cfg = tower_cfg.get("vision_config") or tower_cfg  # a full CLIP / SigLIP config nests it
    values = [cfg.get(k) for k in ("hidden_size", "num_hidden_layers", "image_size", "patch_size")]
    if not all(isinstance(v, int) and v > 0 for v in values):
        raise InvalidAdapter(f"{TOWER}/config.json: a vision tower config needs positive hidden_size, "
                             "num_hidden_layers, image_size and patch_size", param="source")
    return values[0], values[1], values[2], values[3]


def read_processor(directory: Path) -> dict[str, Any] | None:
    return SoftTokenKind.read_json(directory, f"{TOWER}/preprocessor_config.json")


def processed_size(processor: dict[str, Any] | None, cfg: VisionConfig, tower_image_size: int) -> int:
    """The square side the tower sees: the processor's crop / size, else config, else tower's."""
    if processor is None:
        return cfg.image_size or tower_image_size
    for key in ("crop_size", "size") if processor.get("do_center_crop") else ("size",):
        size = processor.get(key)
        if isinstance(size, int):
            return size
        if isinstance(size, dict):
            side = size.get("height") or size.get("shortest_edge")
            if isinstance(side, int) and (size.get("width") in (None, side)):
                return side
    raise InvalidAdapter(f"{TOWER}/preprocessor_config.json: cannot tell the square input size "
                         "(expected size / crop_size with height == width or shortest_edge)", param="source")


@register_kind
class VisionKind(SoftTokenKind):
    name = KIND
    accepts = ("image_url",)
    trainer = "floe.adapters.vision.cli:train_vision"
    demo = "floe.adapters.vision.demo:build"

    config = VisionConfig
    files = (f"{TOWER}/config.json", PROJECTOR)

    def describe(self, directory: Path, manifest: dict[str, Any], cfg: VisionConfig,
                 limits: EngineLimits) -> AdapterInfo:
        tower_cfg = self.require_model_dir(directory, TOWER, "a Hugging Face vision model")
        d_vis, n_layers, tower_size, patch = tower_geometry(tower_cfg)
        for layer in cfg.layers:
            if not -(n_layers + 1) <= layer <= n_layers:
                raise InvalidAdapter(f"feature_layer {layer} out of range for a {n_layers}-layer tower",
                                     param="source")
        size = processed_size(read_processor(directory), cfg, tower_size)
        if size % patch:
            raise InvalidAdapter(f"image size {size} is not a multiple of the patch size {patch}", param="source")
        shapes = safetensors_shapes(directory / PROJECTOR)
        if any(key not in shapes or len(shapes[key]) != 2 for key in PROJECTOR_KEYS):
            raise InvalidAdapter(f"{PROJECTOR} needs 2-D {' and '.join(PROJECTOR_KEYS)} (LLaVA's "
                                 "multi_modal_projector)", param="source")
        (d_mid, d_in), (d_llm, d_mid2) = shapes["linear_1.weight"], shapes["linear_2.weight"]
        if d_in != d_vis * len(cfg.layers) or d_mid2 != d_mid:
            raise InvalidAdapter(f"projector shapes {shapes['linear_1.weight']} / {shapes['linear_2.weight']} "
                                 f"do not fit a tower of width {d_vis} x {len(cfg.layers)} feature layer(s)",
                                 param="source")
        patches = (size // patch) ** 2
        has_cls = tower_cfg.get("model_type") not in ("siglip_vision_model", "siglip")
        tokens = patches + (1 if has_cls else 0) - (1 if cfg.select_strategy == "drop_first" or
                                                     (has_cls and cfg.select_strategy == "default") else 0)
        return self.info(manifest, **cfg.public(), tower=tower_cfg.get("model_type"), tower_width=d_vis,
                         image_input_size=size, patch_size=patch, tokens_per_image=tokens, llm_width=d_llm,
                         trained=manifest.get("trained"))

    # -- execution (LLMServer replica) ----------------------------------------------------------
    async def load(self, directory: Path, backbone: Any, ref: Any) -> VisionAdapter:
        """Tower + projector on CPU (in a thread); the projector must map to the base's width."""
        from floe.adapters.vision.model import load_for_backbone

        return await asyncio.to_thread(load_for_backbone, Path(directory), backbone)

    def embed(self, loaded: VisionAdapter, messages: list[Any]) -> list[Any]:
        """Every `image_url` part -> a `prompt_embeds` part ([n_patches, d_llm] float32)."""
        from floe.adapters.vision.model import embed_messages

        return embed_messages(loaded, messages)
