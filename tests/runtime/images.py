"""Test images: deterministic PNGs, data URLs, and the FLAME image embedding computed by hand."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch


def png(seed: int, size: tuple[int, int] = (40, 28), mode: str = "RGB") -> bytes:
    """A deterministic noise PNG (any size: the adapter resizes it)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8), mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def manual_embedding(adapter_dir, data: bytes, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> torch.Tensor:
    """The FLAME image embedding computed by hand from the adapter's files."""
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import ViTModel

    vit = ViTModel.from_pretrained(adapter_dir / "vision", add_pooling_layer=False).eval()
    w = load_file(str(adapter_dir / "projector.safetensors"))
    size = vit.config.image_size
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.tensor(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    with torch.no_grad():
        cls = vit(pixel_values=x[None]).last_hidden_state[0, 0]
        h = torch.nn.functional.gelu(cls @ w["0.weight"].T + w["0.bias"])
        out = h @ w["2.weight"].T + w["2.bias"]
    return out / out.norm()
