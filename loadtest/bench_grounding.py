"""Grounding (F-LMM) on held-out scenes: mIoU / cIoU next to two baselines, and segmentations/s
with batching on vs off, in one run.

    .venv/bin/python loadtest/bench_grounding.py [--scenes 400] [--test 150] [--epochs 16] [--batch 16]

1. A RefCOCO-style set of `--scenes` synthetic scenes (2-3 coloured shapes each, the demo's
   generator, a seed the demo never uses) is written, and `floe adapters train grounding` (the
   CLI, in a subprocess) fits a mask head on the built-in base + demo-vision, LMM frozen.
2. On `--test` scenes from another seed, every object is asked for by its phrase ("the red
   circle") and scored against its mask at image resolution:
     adapter           the served computation (kind.prepare -> run -> masks)
     union of objects  the mask of every object in the scene (what a phrase-blind detector gives)
     uniform attention the same head fed uniform attention maps: it shows whether the attention
                       carries the phrase (equal to the adapter when it does not)
   mIoU: the mean of per-phrase IoUs; cIoU: summed intersections over summed unions.
3. Throughput through the FrozenRuntime's batch runner (RuntimeEngine.run_batch, no Ray), one
   thread: `--batch` single-phrase requests as one batch vs one at a time.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TRAIN_SEED, TEST_SEED = 21, 22


def train_with_cli(base: Path, vision_dir: Path, work: Path, scenes: int, epochs: int) -> Path:
    from floe.adapters.grounding import demo

    data = demo.write_set(work / "set", scenes, max(20, scenes // 8), seed=TRAIN_SEED)
    out = work / "adapter"
    cmd = [sys.executable, "-m", "floe.server.cli", "adapters", "train", "grounding", "--data", str(data),
           "--out", str(out), "--vision", str(vision_dir), "--vision-name", "demo-vision", "--model", str(base),
           "--epochs", str(epochs)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    print(f"trained with the CLI on {scenes} scenes in {time.perf_counter() - t0:.0f}s")
    return out


def evaluate(kind, backbone, loaded, n: int) -> dict[str, tuple[float, float]]:
    from floe.adapters.grounding import demo
    from floe.adapters.grounding.masks import miou_ciou
    from floe.adapters.grounding.model import run
    from floe.adapters.vision.demo import data_url
    from floe.server.config import MediaConfig
    from floe.server.schemas.segmentations import GroundCall

    rng = random.Random(TEST_SEED)
    pairs: dict[str, list] = {"adapter": [], "union of objects": [], "uniform attention": []}
    for _ in range(n):
        img, objects = demo.scene(rng)
        item = kind.prepare(backbone, loaded, GroundCall(image=data_url(img), media=MediaConfig(),
                                                         phrases=[sentences[0] for _, sentences in objects]))
        union = np.clip(sum(mask for mask, _ in objects), 0, 1).astype(np.uint8)
        served = run(backbone.llm, [(loaded, item)])[0]
        uniform = run(backbone.llm, [(loaded, item)], uniform=True)[0]
        for k, (mask, _) in enumerate(objects):
            pairs["adapter"].append((served.masks[k], mask))
            pairs["union of objects"].append((union, mask))
            pairs["uniform attention"].append((uniform.masks[k], mask))
    return {name: miou_ciou(p) for name, p in pairs.items()}


def throughput(engine, resident, kind, backbone, batch: int, rounds: int = 3) -> tuple[float, float]:
    from floe.adapters.grounding import demo
    from floe.adapters.vision.demo import data_url
    from floe.server.config import MediaConfig
    from floe.server.schemas.segmentations import GroundCall

    rng = random.Random(5)
    items = []
    for _ in range(batch):
        img, objects = demo.scene(rng)
        items.append((resident, kind.prepare(backbone, resident.value, GroundCall(
            image=data_url(img), media=MediaConfig(), phrases=[objects[0][1][0]]))))
    engine.run_batch(items[:2])  # warm
    rates = []
    for grouped in (True, False):
        t0 = time.perf_counter()
        for _ in range(rounds):
            if grouped:
                engine.run_batch(items)
            else:
                for item in items:
                    engine.run_batch([item])
        rates.append(rounds * batch / (time.perf_counter() - t0))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=400)
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("FLOE_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".floe-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    from floe.adapters.grounding.demo import vision_demo
    from floe.server.config import RuntimeConfig
    from floe.server.kinds import get_kind
    from floe.server.models.builtin import prepare
    from floe.server.runtime.engine import Resident, RuntimeEngine
    from floe.server.runtime.model import FrozenModel

    base = prepare("floe-tiny-chat")
    vision_dir = vision_demo(base)
    with tempfile.TemporaryDirectory(prefix="bench-grounding-") as tmp:
        adapter_dir = train_with_cli(base, vision_dir, Path(tmp), args.scenes, args.epochs)
        engine = RuntimeEngine(FrozenModel(base), RuntimeConfig())
        kind = get_kind("grounding")
        loaded = kind.load(adapter_dir, engine.backbone, None)
        scores = evaluate(kind, engine.backbone, loaded, args.test)
        batched, single = throughput(engine, Resident(kind, loaded), kind, engine.backbone, args.batch)
    print(f"\nheld-out scenes: {args.test} (seed {TEST_SEED}), one phrase per object, masks at 64x64")
    print(f"{'method':<20} {'mIoU':>7} {'cIoU':>7}")
    for name, (miou, ciou) in scores.items():
        print(f"{name:<20} {miou:7.3f} {ciou:7.3f}")
    print(f"\nsegmentations/s (one phrase each, one thread): batch of {args.batch} {batched:7.1f}   "
          f"one at a time {single:7.1f}   ({batched / single:.2f}x)")


if __name__ == "__main__":
    main()
