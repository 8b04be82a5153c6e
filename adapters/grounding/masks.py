"""Masks on the wire and their measures: COCO compressed RLE (pycocotools), PNG, boxes, IoU.

    mask uint8 [h, w] -> pycocotools.mask.encode (Fortran order) -> {"size": [h, w], "counts": str}
                      -> or a 1-bit PNG, base64: {"size": [h, w], "png": str}
    box = [x0, y0, x1, y1] of the mask's pixels, x1 / y1 exclusive ([0, 0, 0, 0] when empty)
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from floe.server.schemas.segmentations import GroundResult


def rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as coco

    encoded = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(x) for x in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def decode_rle(obj: dict[str, Any]) -> np.ndarray:
    """uint8 [h, w] of a COCO RLE (compressed string counts, or uncompressed list counts)."""
    from pycocotools import mask as coco

    counts = obj["counts"]
    if isinstance(counts, list):
        obj = coco.frPyObjects(obj, *obj["size"])
        counts = obj["counts"]
    return coco.decode({"size": list(obj["size"]), "counts": counts.encode() if isinstance(counts, str) else counts})


def png(mask: np.ndarray) -> dict[str, Any]:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(bool)).save(buf, format="PNG")
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "png": base64.b64encode(buf.getvalue()).decode("ascii")}


def box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def iou(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """(intersection, union) pixel counts."""
    p, t = pred.astype(bool), truth.astype(bool)
    return int((p & t).sum()), int((p | t).sum())


def miou_ciou(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """mIoU (mean of per-mask IoUs; an empty union counts 1) and cIoU (summed I / summed U)."""
    counts = [iou(p, t) for p, t in pairs]
    ious = [i / u if u else 1.0 for i, u in counts]
    total_u = sum(u for _, u in counts)
    return float(np.mean(ious)) if ious else 0.0, (sum(i for i, _ in counts) / total_u) if total_u else 1.0


def finish(out: Any) -> GroundResult:
    """A model.Grounded -> the family's result (masks encoded as asked)."""
    encode = png if out.mask_format == "png" else rle
    segments = [{"phrase": phrase, "score": score, "box": box(mask), "mask": encode(mask)}
                for phrase, mask, score in zip(out.phrases, out.masks, out.scores)]
    return GroundResult(width=out.width, height=out.height, segments=segments)
