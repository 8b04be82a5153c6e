"""`POST /v1/segmentations`: phrase-grounded masks (a `grounding` adapter), for both clients.

    floe.segmentations.create(model="demo-grounding", image=url, phrases=["the red circle"])
    -> Segmentation(answer, width, height, segments=[Segment(phrase, score, box, mask)])
    segment.to_numpy() -> uint8 [height, width] (numpy, which the SDK does not require otherwise)

Masks come as COCO compressed RLE (`{"size": [h, w], "counts": str}`, what
`pycocotools.mask.decode` reads) or as a base64 PNG (`mask_format="png"`). `decode_rle` reads
the RLE string in pure Python (pycocotools' `rleFrString`: 5-bit groups offset by 48, a
continuation bit, sign extension, counts from the third on stored as the difference to the count
two before; runs alternate 0 / 1 from 0, column-major).
"""

from __future__ import annotations

from typing import Any

from floe.client._core import Call, Resource, model_parser
from floe.client.types import FloeModel


def rle_counts(counts: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string."""
    out: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def decode_rle(mask: dict[str, Any]) -> Any:
    """numpy uint8 [h, w] of `{"size": [h, w], "counts": str}`."""
    import numpy as np

    h, w = (int(v) for v in mask["size"])
    runs = rle_counts(mask["counts"])
    if sum(runs) != h * w:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, the mask has {h * w}")
    flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8)
    return flat.reshape(w, h).T.copy()  # column-major, as COCO stores masks


def decode_png(mask: dict[str, Any]) -> Any:
    import base64
    import io

    import numpy as np
    from PIL import Image

    return (np.asarray(Image.open(io.BytesIO(base64.b64decode(mask["png"])))) > 0).astype(np.uint8)


class Segment(FloeModel):
    phrase: str
    score: float
    box: list[float]  # [x0, y0, x1, y1] in image pixels, x1 / y1 exclusive
    mask: dict[str, Any]

    def to_numpy(self) -> Any:
        """The mask as numpy uint8 [height, width] (RLE in pure Python; PNG needs Pillow)."""
        return decode_png(self.mask) if "png" in self.mask else decode_rle(self.mask)


class Segmentation(FloeModel):
    object: str = "segmentation"
    model: str
    answer: str | None = None
    width: int
    height: int
    segments: list[Segment]

    def masks(self) -> list[Any]:
        return [s.to_numpy() for s in self.segments]


def segmentation_call(model: str, image: str, prompt: str | None, phrases: list[str] | None, refine: bool | None,
                      mask_format: str | None, extra: dict[str, Any]) -> Call[Segmentation]:
    body = {k: v for k, v in {"model": model, "image": image, "prompt": prompt, "phrases": phrases,
                              "refine": refine, "mask_format": mask_format, **extra}.items() if v is not None}
    return Call("POST", "/v1/segmentations", model_parser(Segmentation), json=body)


class Segmentations(Resource):
    def create(self, *, model: str, image: str, prompt: str | None = None, phrases: list[str] | None = None,
               refine: bool | None = None, mask_format: str | None = None, **extra: Any) -> Segmentation:
        """Ground `phrases` (or the noun phrases of the answer to `prompt`) in `image` (a data URL)."""
        return self._client.request(segmentation_call(model, image, prompt, phrases, refine, mask_format, extra))


class AsyncSegmentations(Resource):
    async def create(self, *, model: str, image: str, prompt: str | None = None, phrases: list[str] | None = None,
                     refine: bool | None = None, mask_format: str | None = None, **extra: Any) -> Segmentation:
        return await self._client.request(segmentation_call(model, image, prompt, phrases, refine, mask_format,
                                                            extra))
