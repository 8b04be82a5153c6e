"""The built-in grounding demo on the demo vision adapter: scenes of several coloured shapes.

Each scene (Pillow, from a seed) holds 2-3 shapes of distinct (colour, shape) pairs from the
vision demo's palette, on a greyish background, in disjoint boxes, often sharing a colour or a
shape with a neighbour, so a phrase ("the red circle") must pick one of them. The scenes are
written as a RefCOCO-style set (`data.write`) and the adapter is trained on it by the same
trainer `floe adapters train grounding` runs (`train.train_to_dir`), deterministically on one
CPU thread; `evaluate` (and loadtest/bench_grounding.py) measure held-out scenes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

SCENE_SIZE = 64
DEMO_DEPENDS = ("vision",)  # server/models/demos.py: rebuilt when the vision demo is
TRAIN_SEED, VAL_SEED, TEST_SEED = 11, 12, 13
TRAIN_SCENES, VAL_SCENES, EPOCHS = 400, 80, 6


def scene(rng: random.Random, size: int = SCENE_SIZE) -> tuple[Any, list[tuple[np.ndarray, list[str]]]]:
    """(Pillow RGB image, [(mask uint8 [size, size], sentences), ...]) of one random scene."""
    from PIL import Image, ImageDraw

    from floe.adapters.vision.demo import COLOURS, SHAPES

    grey = rng.randint(40, 215)
    background = tuple(max(0, min(255, grey + rng.randint(-12, 12))) for _ in range(3))
    img = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(img)
    n = rng.choice((2, 3, 3))
    first = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
    pairs = [first]
    while len(pairs) < n:  # neighbours often share the colour or the shape of the first
        roll = rng.random()
        colour = first[0] if roll < 0.35 else rng.choice(list(COLOURS))
        shape = first[1] if 0.35 <= roll < 0.7 else rng.choice(SHAPES)
        if (colour, shape) not in pairs:
            pairs.append((colour, shape))
    boxes: list[tuple[int, int, int, int]] = []
    objects = []
    for colour, shape in pairs:
        for _ in range(200):  # disjoint boxes, by rejection
            side = rng.randint(size * 5 // 16, size * 7 // 16)
            x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
            box = (x0, y0, x0 + side, y0 + side)
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                break
        else:
            continue
        boxes.append(box)
        layer = Image.new("L", (size, size), 0)
        shape_pen = ImageDraw.Draw(layer)
        corners = (x0, y0, x0 + side - 1, y0 + side - 1)
        if shape == "circle":
            shape_pen.ellipse(corners, fill=255)
        elif shape == "square":
            shape_pen.rectangle(corners, fill=255)
        else:
            shape_pen.polygon([(x0 + side / 2, y0), (x0, y0 + side - 1), (x0 + side - 1, y0 + side - 1)], fill=255)
        fill = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in COLOURS[colour])
        pen.bitmap((0, 0), layer, fill=fill)
        objects.append(((np.asarray(layer) > 127).astype(np.uint8), [f"the {colour} {shape}", f"{colour} {shape}"]))
    return img, objects


def scenes(n: int, seed: int) -> list[tuple[Any, list[tuple[np.ndarray, list[str]]]]]:
    rng = random.Random(seed)
    return [scene(rng) for _ in range(n)]


def write_set(directory: Path, n_train: int, n_val: int, seed: int = TRAIN_SEED) -> Path:
    """A RefCOCO-style set of `n_train` + `n_val` scenes (`split` train / val)."""
    from floe.adapters.grounding.data import write

    drawn = scenes(n_train, seed) + scenes(n_val, seed + 1000)
    return write(directory, drawn, ["train"] * n_train + ["val"] * n_val)


def vision_demo(base_dir: Path) -> Path:
    """The demo vision adapter for `base_dir` (built now if it is not cached)."""
    from floe.server.models.builtin import cache_root
    from floe.server.models.demos import prepare_demo

    path = prepare_demo("vision", Path(base_dir), cache_root())
    if path is None:
        raise RuntimeError("the vision demo adapter could not be built")
    return path


def build(base_dir: Path, out: Path) -> Path:
    """Train the demo grounding adapter for `base_dir` into `out` (deterministic, one CPU thread)."""
    import tempfile

    import torch

    from floe.adapters.grounding.train import TrainConfig, train_to_dir

    vision_dir = vision_demo(base_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="floe-grounding-demo-") as tmp:
            data = write_set(Path(tmp) / "scenes", TRAIN_SCENES, VAL_SCENES)
            path, _ = train_to_dir(Path(base_dir), data, Path(out), vision_dir, "demo-vision",
                                   TrainConfig(epochs=EPOCHS, batch_size=16, tune_projector=True),
                                   extra={"data": f"{TRAIN_SCENES} synthetic scenes of 2-3 coloured shapes"})
    finally:
        torch.set_num_threads(threads)
    return path
