"""FLAME image tower (docs/methods.md, FLAME): image -> ViT -> MLP projector to the LLM width -> L2.

    data URL -> Pillow decode -> RGB -> bicubic resize to the ViT's image_size -> [0, 1]
    -> (x - mean) / std -> ViTModel (no pooler) -> CLS (last_hidden_state[:, 0])
    -> Linear(d_vit, d_llm) -> GELU -> Linear(d_llm, d_llm) -> L2-normalise

An `image_encoder` adapter is a directory:

    floe_adapter.json       {"kind": "image_encoder", "base_model": <fingerprint>, "version",
                             "config": {"mean": [..3], "std": [..3], "normalize": true}}
    vision/                 a Hugging Face ViT (config.json + model.safetensors), `ViTModel`
    projector.safetensors   the MLP: `0.weight` [d_llm, d_vit], `0.bias`, `2.weight`, `2.bias`

The projector maps into the base model's width, so the manifest names the base it was made for
(its fingerprint) and a mismatch is refused at load. Preprocessing needs only Pillow (no
torchvision). `write` makes a seeded tiny adapter offline (tests, docs).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path
from typing import Any

import torch

from floe.adapters.encoder import is_image_input
from floe.adapters.image_encoder import KIND, PROJECTOR, VISION, ImageEncoderConfig, ImageEncoderKind
from floe.server.errors import InvalidRequest
from floe.server.kinds import MANIFEST, InvalidAdapter

MAX_PIXELS = 40_000_000  # decoded width * height; a larger image is refused (decompression bombs)


# -- inputs --------------------------------------------------------------------------------------
def data_url_bytes(item: Any, index: int, max_bytes: int) -> bytes:
    """The bytes of one `data:image/<type>;base64,<payload>` input (400 on anything else)."""
    param = "input"
    if not isinstance(item, str):
        raise InvalidRequest(f"input[{index}]: an image_encoder model takes images as "
                             "`data:image/...;base64,...` URL strings, not token arrays", param=param)
    head = item[:8].lower()
    if head.startswith(("http://", "https://")):
        raise InvalidRequest(f"input[{index}]: image URLs are not fetched; send the image inline as a "
                             "`data:image/...;base64,...` URL", param=param, code="unsupported_image_url")
    if not is_image_input(item):
        raise InvalidRequest(f"input[{index}]: an image_encoder model embeds images only; send each as "
                             "a `data:image/...;base64,...` URL", param=param)
    meta, sep, payload = item.partition(",")
    if not sep or not meta.lower().endswith(";base64"):
        raise InvalidRequest(f"input[{index}]: the image data URL must be base64 "
                             "(`data:image/<type>;base64,<data>`)", param=param)
    if len(payload) > 4 * (max_bytes // 3 + 2):  # refuse before decoding a huge payload
        raise InvalidRequest(f"input[{index}]: the image is larger than {max_bytes} bytes", param=param,
                             code="image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"input[{index}]: the image data URL is not valid base64", param=param) from exc
    if len(data) > max_bytes:
        raise InvalidRequest(f"input[{index}]: the image is {len(data)} bytes; at most {max_bytes}",
                             param=param, code="image_too_large")
    return data


def decode_image(data: bytes, index: int = 0):
    """A Pillow RGB image of `data` (400 when it is not an image Pillow can decode)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise InvalidRequest(f"input[{index}]: the image has {img.width}x{img.height} pixels; "
                                     f"at most {MAX_PIXELS} in all", param="input", code="image_too_large")
            img.load()
            return img.convert("RGB")
    except InvalidRequest:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(f"input[{index}]: the image could not be decoded ({exc})", param="input",
                             code="invalid_image") from exc


def preprocess(images: list, image_size: int, cfg: ImageEncoderConfig) -> torch.Tensor:
    """Pillow RGB images -> float32 [B, 3, image_size, image_size], normalised with mean / std."""
    import numpy as np
    from PIL import Image

    arrays = [np.asarray(img.convert("RGB").resize((image_size, image_size), Image.BICUBIC),
                         dtype=np.float32) / 255.0 for img in images]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # [B, H, W, 3] -> [B, 3, H, W]
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return ((pixels - mean) / std).contiguous()


# -- the model -----------------------------------------------------------------------------------
def projector(d_vit: int, d_llm: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(d_vit, d_llm), torch.nn.GELU(), torch.nn.Linear(d_llm, d_llm))


class ImageEncoder(torch.nn.Module):
    """ViT CLS -> MLP projector -> (L2). Frozen, eval mode, float32."""

    def __init__(self, vit, proj: torch.nn.Sequential, cfg: ImageEncoderConfig) -> None:
        super().__init__()
        self.vit, self.proj, self.cfg = vit, proj, cfg
        self.image_size: int = int(vit.config.image_size)
        self.num_tokens: int = (self.image_size // int(vit.config.patch_size)) ** 2 + 1  # patches + CLS
        self.dim: int = proj[2].out_features
        self.eval().requires_grad_(False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        cls = self.vit(pixel_values=pixels).last_hidden_state[:, 0]
        out = self.proj(cls).float()
        return torch.nn.functional.normalize(out, dim=-1) if self.cfg.normalize else out

    @torch.no_grad()
    def embed(self, images: list) -> torch.Tensor:
        """[len(images), d_llm] embeddings of Pillow images (or raw encoded bytes)."""
        decoded = [decode_image(x, i) if isinstance(x, (bytes, bytearray)) else x
                   for i, x in enumerate(images)]
        return self(preprocess(decoded, self.image_size, self.cfg))


def write(directory: Path, llm_hidden: int, base_fingerprint: str | None, *, seed: int = 0,
          version: str = "1", cfg: ImageEncoderConfig | None = None, image_size: int = 32,
          patch_size: int = 8, hidden_size: int = 64, num_layers: int = 2) -> Path:
    """A seeded, randomly initialised (untrained) tiny image_encoder adapter, made offline."""
    from safetensors.torch import save_file
    from transformers import ViTConfig, ViTModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = cfg or ImageEncoderConfig()
    vit_cfg = ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=3,
                        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=2,
                        intermediate_size=2 * hidden_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = ViTModel(vit_cfg, add_pooling_layer=False)
        proj = projector(hidden_size, llm_hidden)
    vit.save_pretrained(directory / VISION, safe_serialization=True)
    save_file({k: v.contiguous() for k, v in proj.state_dict().items()}, str(directory / PROJECTOR))
    (directory / MANIFEST).write_text(json.dumps(
        {"kind": KIND, "base_model": base_fingerprint, "version": version, "config": cfg.public()},
        indent=1))
    return directory


def load(directory: Path, llm_hidden: int | None = None) -> ImageEncoder:
    """The adapter's encoder; `llm_hidden` (the serving base's width) is checked when given."""
    from safetensors.torch import load_file
    from transformers import ViTModel

    directory = Path(directory)
    manifest = ImageEncoderKind.read_manifest(directory)
    try:
        cfg = ImageEncoderConfig.from_dict(manifest.get("config") or {})
        vit = ViTModel.from_pretrained(directory / VISION, add_pooling_layer=False, dtype=torch.float32)
        state = load_file(str(directory / PROJECTOR))
        d_llm, d_vit = state["0.weight"].shape
        proj = projector(d_vit, d_llm)
        proj.load_state_dict(state)
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise InvalidAdapter(f"{directory.name}: not a loadable image_encoder adapter: {exc}",
                             param="source") from exc
    if d_vit != vit.config.hidden_size:
        raise InvalidAdapter(f"projector takes width {d_vit}, the ViT gives {vit.config.hidden_size}",
                             param="source")
    if llm_hidden is not None and d_llm != llm_hidden:
        raise InvalidAdapter(f"projector maps to width {d_llm}; this base model's width is {llm_hidden}",
                             param="source")
    return ImageEncoder(vit, proj, cfg)
