"""The `image_encoder` kind: FLAME's image tower (ViT CLS -> MLP projector -> L2) for
POST /v1/embeddings. Torch-free: the network, the image decoding and `write` live in `model.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from floe.server.kinds import KindConfig, RuntimeKind, register_kind, stacked_forward
from floe.server.schemas.embeddings import EmbedCall, EmbedResult

if TYPE_CHECKING:
    from floe.adapters.image_encoder.model import ImageEncoder
    from floe.server.kinds import AdapterInfo, EngineLimits
    from floe.server.runtime.engine import RuntimeBackbone

KIND = "image_encoder"
VISION = "vision"
PROJECTOR = "projector.safetensors"


@dataclass(frozen=True)
class ImageEncoderConfig(KindConfig):
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    normalize: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")




@dataclass(eq=False)
class ImageItem:
    """One request's images, decoded and preprocessed: [n inputs, 3, H, W]."""

    pixels: Any


@register_kind
class ImageEncoderKind(RuntimeKind):
    name = KIND
    serves = ("embeddings",)

    config = ImageEncoderConfig
    files = (f"{VISION}/config.json", PROJECTOR)

    def describe(self, directory: Path, manifest: dict[str, Any], cfg: ImageEncoderConfig,
                 limits: EngineLimits) -> AdapterInfo:
        vit_cfg = self.require_model_dir(directory, VISION, "a ViT")
        return self.info(manifest, **cfg.public(), image_size=vit_cfg.get("image_size"),
                         patch_size=vit_cfg.get("patch_size"))

    # -- execution ---------------------------------------------------------------------------
    def load(self, directory: Path, backbone: RuntimeBackbone, ref: Any) -> ImageEncoder:
        from floe.adapters.image_encoder.model import load

        self.check_base(self.read_manifest(directory), backbone.llm.fingerprint)
        return load(directory, backbone.llm.hidden_size)

    def prepare(self, backbone: RuntimeBackbone, loaded: ImageEncoder, request: EmbedCall) -> ImageItem:
        """Decode and preprocess every image of one request (400 on a bad one, before batching)."""
        from floe.adapters.image_encoder.model import data_url_bytes, decode_image, preprocess

        limit = backbone.config.max_image_bytes
        images = [decode_image(data_url_bytes(item, i, limit), i) for i, item in enumerate(request.inputs)]
        return ImageItem(preprocess(images, loaded.image_size, loaded.cfg))

    def run(self, backbone: RuntimeBackbone, batch: list[tuple[ImageEncoder, ImageItem]]
            ) -> list[EmbedResult]:
        # every image of every request of one adapter in one ViT forward
        outs = stacked_forward(batch, lambda item: item.pixels, lambda encoder, x: encoder(x))
        return [EmbedResult(vectors.tolist(), encoder.num_tokens * vectors.shape[0], encoder.cfg.normalize)
                for (encoder, _), vectors in zip(batch, outs, strict=True)]
