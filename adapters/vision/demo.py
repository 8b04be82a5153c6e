"""The built-in vision demo adapter: coloured shapes, captions like "a red circle".

Pictures are drawn with Pillow from a seed: one of COLOURS x SHAPES, random size and position,
on a random low-saturation (greyish) background, so the colour word always names the shape.
The tower is the demo's own tiny seeded CLIP vision model (no downloads); the projector and the
tower are trained (the manifest's `trained` says so) through the frozen built-in base with
teacher forcing on the caption, for a fixed number of steps on one CPU thread (deterministic).
`evaluate` decodes greedily, as the server does, on pictures drawn from another seed.
"""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path
from typing import Any

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 210, 30),
           "purple": (140, 40, 170), "orange": (240, 130, 20)}
SHAPES = ("circle", "square", "triangle")
PROMPTS = ("What is in the picture?", "Describe the image.", "What do you see?", "")
IMAGE_SIZE = 32
TRAIN_SEED, TEST_SEED = 1, 2
TRAIN_PICTURES, STEPS, BATCH = 1536, 240, 16


def draw(rng: random.Random, size: int = IMAGE_SIZE) -> tuple[Any, str, str]:
    """(Pillow RGB image, colour, shape) of one random picture."""
    from PIL import Image, ImageDraw

    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    grey = rng.randint(40, 215)
    background = tuple(max(0, min(255, grey + rng.randint(-12, 12))) for _ in range(3))
    img = Image.new("RGB", (size, size), background)
    side = rng.randint(size * 2 // 5, size * 4 // 5)
    x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
    box = (x0, y0, x0 + side - 1, y0 + side - 1)
    fill = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in COLOURS[colour])
    pen = ImageDraw.Draw(img)
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(x0 + side / 2, y0), (x0, y0 + side - 1), (x0 + side - 1, y0 + side - 1)], fill=fill)
    return img, colour, shape


def caption(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def data_url(img: Any) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def conversation(img: Any, prompt: str, answer: str | None = None) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_url(img)}}]
    if prompt:
        parts.append({"type": "text", "text": prompt})
    messages = [{"role": "user", "content": parts}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def pictures(n: int, seed: int) -> list[tuple[Any, str, str]]:
    rng = random.Random(seed)
    return [draw(rng) for _ in range(n)]


def write_jsonl(path: Path, n: int, seed: int) -> Path:
    """Chat fine-tuning JSONL of `n` pictures (for `floe adapters train vision`)."""
    import json

    rng = random.Random(seed + 1000)
    with open(path, "w") as fh:
        for img, colour, shape in pictures(n, seed):
            fh.write(json.dumps({"messages": conversation(img, rng.choice(PROMPTS), caption(colour, shape))}) + "\n")
    return Path(path)


def samples(n: int, seed: int, prompt: str | None = None) -> list:
    from floe.adapters.vision.train import Sample

    rng = random.Random(seed + 1000)
    out = []
    for img, colour, shape in pictures(n, seed):
        text = rng.choice(PROMPTS) if prompt is None else prompt
        out.append(Sample(conversation(img, text)[:1], [img], caption(colour, shape)))
    return out


def score(answers: list[str], truth: list[tuple[str, str]]) -> dict[str, float]:
    """Colour / shape / exact accuracy of greedy answers, with the chance levels."""
    def named(answer: str, words) -> set[str]:
        return {w for w in words if w in answer.split()}

    n = len(truth)
    colour = sum(named(a, COLOURS) == {c} for a, (c, _) in zip(answers, truth)) / n
    shape = sum(named(a, SHAPES) == {s} for a, (_, s) in zip(answers, truth)) / n
    exact = sum(a == caption(c, s) for a, (c, s) in zip(answers, truth)) / n
    return {"colour_accuracy": colour, "shape_accuracy": shape, "exact_match": exact,
            "colour_chance": 1 / len(COLOURS), "shape_chance": 1 / len(SHAPES), "n": n}


def evaluate(base_dir: Path, adapter_dir: Path, n: int = 300, seed: int = TEST_SEED,
             prompt: str = PROMPTS[0]) -> dict[str, float]:
    """Held-out accuracy: greedy answers for `n` pictures drawn from `seed` (never trained on)."""
    import torch
    from transformers import AutoModelForCausalLM

    from floe.adapters.vision.chat import placeholder_tokenizer
    from floe.adapters.vision.model import llm_width, load
    from floe.adapters.vision.train import encode, greedy

    adapter = load(adapter_dir, llm_width(base_dir))
    lm = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    tokenizer, placeholder = placeholder_tokenizer(base_dir)
    held_out = samples(n, seed, prompt)
    answers = greedy(adapter, lm, tokenizer, placeholder, encode(held_out, tokenizer, placeholder, adapter))
    truth = [tuple(s.target.split()[1:3]) for s in held_out]
    return score(answers, truth)


def build(base_dir: Path, out: Path) -> Path:
    """Train the demo adapter for `base_dir` into `out` (deterministic; about a minute of CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    from floe.adapters.vision.chat import placeholder_tokenizer
    from floe.adapters.vision.model import llm_width, save
    from floe.adapters.vision.train import TrainConfig, encode, new_adapter, split, train
    from floe.server.runtime.model import base_fingerprint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            adapter = new_adapter(llm_width(base_dir), None, image_size=IMAGE_SIZE, seed=0)
            lm = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
            tokenizer, placeholder = placeholder_tokenizer(base_dir)
            items = encode(samples(TRAIN_PICTURES, TRAIN_SEED), tokenizer, placeholder, adapter)
            train_set, val_set = split(items, 0.0625, seed=0)
            tcfg = TrainConfig(epochs=100, batch_size=BATCH, lr=3e-3, tower_lr=1e-3, train_tower=True,
                               max_steps=STEPS, eval_limit=96, seed=0)
            report = train(adapter, lm, tokenizer, placeholder, train_set, val_set, tcfg)
        save(out, adapter, base_fingerprint(base_dir), extra={
            "trained": report["trained"], "training": {**report, "data": "synthetic coloured shapes",
                                                       "colours": list(COLOURS), "shapes": list(SHAPES)}})
    finally:
        torch.set_num_threads(threads)
    return Path(out)
