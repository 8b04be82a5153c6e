"""RefCOCO-style training data: COCO instances + a `refs` list, read with pycocotools.

    DIR/annotations.json  {"images": [{"id", "file_name", "height", "width"}],
                           "annotations": [{"id", "image_id", "segmentation"}],  # polygons or RLE
                           "refs": [{"ref_id", "ann_id", "image_id", "split",
                                     "sentences": [{"sent"}]}]}
    DIR/images/<file_name>

Every (sentence, mask) pair of a ref is one sample. A malformed file is a ValueError naming
what is wrong (the trainer prints it and exits with status 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ANNOTATIONS = "annotations.json"
IMAGES = "images"


@dataclass
class Ref:
    ref_id: Any
    image: Path
    mask: np.ndarray  # uint8 [height, width]
    sentences: list[str]
    split: str


def ann_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """uint8 [h, w] of a COCO segmentation: polygons, uncompressed RLE or compressed RLE."""
    from pycocotools import mask as coco

    if isinstance(segmentation, list):  # polygons [[x, y, x, y, ...], ...]
        rles = coco.frPyObjects(segmentation, height, width)
        rle = coco.merge(rles)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = coco.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str):
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
    else:
        raise ValueError("a segmentation must be polygons or an RLE {size, counts}")
    return coco.decode(rle).astype(np.uint8)


def read(directory: Path) -> list[Ref]:
    directory = Path(directory)
    path = directory / ANNOTATIONS
    if not path.is_file():
        raise ValueError(f"{directory}: no {ANNOTATIONS} (COCO instances with a RefCOCO-style `refs` list)")
    try:
        data = json.loads(path.read_text())
        images = {img["id"]: img for img in data["images"]}
        anns = {ann["id"]: ann for ann in data["annotations"]}
        refs = data["refs"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: expected COCO `images` / `annotations` and a `refs` list ({exc!r})") from exc
    root = (directory / IMAGES).resolve()
    out = []
    for n, ref in enumerate(refs):
        try:
            ann, img = anns[ref["ann_id"]], images[ref["image_id"]]
            sentences = [s["sent"] for s in ref["sentences"] if str(s.get("sent", "")).strip()]
            height, width = int(img["height"]), int(img["width"])
            mask = ann_mask(ann["segmentation"], height, width)
            image = (root / img["file_name"]).resolve()
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: refs[{n}]: {exc!r}") from exc
        if not image.is_relative_to(root) or not image.is_file():
            raise ValueError(f"{path}: refs[{n}]: image {img['file_name']!r} not found under {IMAGES}/")
        if sentences:
            out.append(Ref(ref.get("ref_id", n), image, mask, sentences, str(ref.get("split", "train"))))
    if not out:
        raise ValueError(f"{path}: no refs with sentences")
    return out


def write(directory: Path, scenes: list[tuple[Any, list[tuple[np.ndarray, list[str]]]]], splits: list[str]) -> Path:
    """A RefCOCO-style set: per scene (Pillow image, [(mask, sentences), ...]) and its split.
    Masks are stored as compressed RLE, the way COCO stores crowd masks."""
    from floe.adapters.grounding.masks import rle

    directory = Path(directory)
    (directory / IMAGES).mkdir(parents=True, exist_ok=True)
    images, anns, refs = [], [], []
    for image_id, ((img, objects), split) in enumerate(zip(scenes, splits)):
        name = f"{image_id:06d}.png"
        img.save(directory / IMAGES / name)
        images.append({"id": image_id, "file_name": name, "height": img.height, "width": img.width})
        for mask, sentences in objects:
            ann_id = len(anns)
            anns.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                         "area": int(mask.sum()), "segmentation": rle(mask)})
            refs.append({"ref_id": len(refs), "ann_id": ann_id, "image_id": image_id, "split": split,
                         "sentences": [{"sent": s} for s in sentences]})
    (directory / ANNOTATIONS).write_text(json.dumps({"images": images, "annotations": anns, "refs": refs,
                                                     "categories": [{"id": 1, "name": "shape"}]}))
    return directory
