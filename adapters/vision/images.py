"""Image parts of a chat request -> pixel arrays the tower takes (Pillow + numpy, no torchvision).

    part {"type": "image_url", "image_url": {"url": data URL | allowlisted http(s)}}
    -> floe.server.media.media_bytes (limits, allowlist, no private addresses)
    -> Pillow decode (400 invalid_image), width x height <= media.max_pixels (400 image_too_large)
    -> RGB -> the tower's PIL image processor (preprocessor_config.json, transformers' `*Pil`
       backend), else a bicubic square resize to image_size, [0, 1], (x - mean) / std
    -> float32 [3, S, S]
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from floe.adapters.vision import VisionConfig, processed_size
from floe.server.errors import InvalidRequest

IMAGE_PARTS = ("image_url",)


def image_url(part: dict[str, Any], param: str) -> str:
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value  # some clients send the bare string
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{param}: an image_url part needs `image_url.url` (a data URL or an "
                             "http(s) URL)", param=param, code="invalid_image")
    return url


def decode_image(data: bytes, param: str, max_pixels: int):
    """A Pillow RGB image (400 when undecodable or larger than `max_pixels` pixels)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > max_pixels:
                    raise InvalidRequest(f"{param}: the image has {img.width}x{img.height} pixels; at most "
                                         f"{max_pixels} in all (media.max_pixels)", param=param,
                                         code="image_too_large")
                img.load()
                return img.convert("RGB")
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequest(f"{param}: the image is too large to decode ({exc})", param=param,
                             code="image_too_large") from exc
    except (OSError, ValueError, SyntaxError, EOFError, TypeError) as exc:
        raise InvalidRequest(f"{param}: the image could not be decoded ({type(exc).__name__})", param=param,
                             code="invalid_image") from exc


class Preprocessor:
    """The tower's PIL image processor when the adapter ships one, else a square resize."""

    def __init__(self, tower_dir: Path | None, cfg: VisionConfig, tower_image_size: int) -> None:
        self.cfg = cfg
        self.processor = None
        config = None
        if tower_dir is not None and (Path(tower_dir) / "preprocessor_config.json").is_file():
            from transformers import AutoImageProcessor

            self.processor = AutoImageProcessor.from_pretrained(tower_dir, backend="pil")
            config = self.processor.to_dict()
        self.size = processed_size(config, cfg, tower_image_size)  # the square side the tower sees
        self._mean = np.asarray(cfg.mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(cfg.std, dtype=np.float32).reshape(3, 1, 1)

    def __call__(self, images: list) -> np.ndarray:
        """Pillow images -> float32 [B, 3, S, S]."""
        if self.processor is not None:
            out = self.processor(images=images, return_tensors="np")["pixel_values"]
            return np.ascontiguousarray(out, dtype=np.float32)
        from PIL import Image

        arrays = []
        for img in images:
            square = img.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
            x = np.asarray(square, dtype=np.float32).transpose(2, 0, 1) / 255.0
            arrays.append((x - self._mean) / self._std)
        return np.stack(arrays).astype(np.float32)
