"""The built-in vision demo adapter: coloured shapes, captions like "a red circle".

Pictures are drawn with Pillow from a seed: one of COLOURS x SHAPES, random size and position,
on a random low-saturation (greyish) background, so the colour word always names the shape.
The tower is the demo's own tiny seeded CLIP vision model (no downloads); tower and projector
are trained (the manifest's `trained` says so), deterministically on one CPU thread:

1. per caption (18), free soft tokens [16, d_llm] are fitted through the frozen base so that it
   says the caption after the chat prompt (any of PROMPTS): teacher forcing, cross-entropy;
2. tower + projector are regressed (MSE, linearly decayed learning rate) onto the soft tokens of
   each fresh picture's caption, pictures drawn anew every step (no picture is seen twice).

End-to-end cross-entropy through the frozen random base (what `train.py` does for any data)
learns far slower per CPU second here (600 steps, ~100 s: 8% exact captions on validation; the
two stages, ~85 s: ~75%). `evaluate` decodes greedily, as the server does, on pictures drawn
from another seed.
"""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path
from typing import Any

from floe.server.training import descend

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 210, 30),
           "purple": (140, 40, 170), "orange": (240, 130, 20)}
SHAPES = ("circle", "square", "triangle")
PROMPTS = ("What is in the picture?", "Describe the image.", "What do you see?", "")
IMAGE_SIZE = 32
TRAIN_SEED, TEST_SEED, VAL_SEED = 1, 2, 3
CAPTION_STEPS, ENCODER_STEPS, ENCODER_BATCH, TOWER_WIDTH, VAL_PICTURES = 160, 960, 48, 128, 96


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
    url = data_url(img) if img is not None else ""
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}}]
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


def fit_caption_tokens(lm: Any, tokenizer: Any, placeholder: int, n_tokens: int, rng: random.Random,
                       steps: int | None = None) -> Any:
    """Stage 1: per caption, free soft tokens [n_tokens, d] that make the frozen LLM say it."""
    import numpy as np
    import torch

    from floe.adapters.vision.chat import expand, render_ids
    from floe.adapters.vision.train import Encoded, loss_of

    captions = [caption(c, s) for c in COLOURS for s in SHAPES]
    eos, no_pixels = tokenizer.eos_token_id, np.zeros((0, 3, 1, 1), np.float32)
    rows = []
    for prompt in PROMPTS:
        ids = render_ids(tokenizer, conversation(None, prompt), add_generation_prompt=True)
        ids, _ = expand(ids, placeholder, [n_tokens])
        rows.append([Encoded(ids + tokenizer(text, add_special_tokens=False)["input_ids"] + [eos], len(ids),
                             no_pixels, text) for text in captions])
    tokens = torch.nn.Parameter(torch.randn(len(captions), n_tokens, lm.config.hidden_size) * 0.3)
    opt = torch.optim.Adam([tokens], lr=0.05)
    for _ in range(steps or CAPTION_STEPS):  # every caption once a step, each with a random prompt
        batch = [rows[rng.randrange(len(PROMPTS))][k] for k in range(len(captions))]
        loss = loss_of(None, lm, placeholder, batch, soft=tokens)
        last = descend(opt, loss)
    return tokens.detach(), last


def fit_encoder(adapter: Any, targets: Any, rng: random.Random, steps: int | None = None,
                batch: int | None = None) -> float:
    """Stage 2: tower + projector regress each fresh picture's soft tokens onto its caption's."""
    import torch

    steps, batch = steps or ENCODER_STEPS, batch or ENCODER_BATCH
    index = {caption(c, s): k for k, (c, s) in enumerate((c, s) for c in COLOURS for s in SHAPES)}
    adapter.requires_grad_(True).train()
    opt = torch.optim.Adam(adapter.parameters(), lr=3e-3)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / steps)
    scale = float((targets ** 2).mean())
    for _ in range(steps):
        drawn = [draw(rng) for _ in range(batch)]
        pixels = torch.from_numpy(adapter.preprocess([img for img, _, _ in drawn]))
        want = targets[torch.tensor([index[caption(c, s)] for _, c, s in drawn])]
        loss = ((adapter(pixels) - want) ** 2).mean() / scale
        last = descend(opt, loss, sched=decay)
    adapter.eval().requires_grad_(False)
    return last


def build(base_dir: Path, out: Path) -> Path:
    """Train the demo adapter for `base_dir` into `out` (deterministic; about 80 s of one CPU thread)."""
    import time

    import torch
    from transformers import AutoModelForCausalLM

    from floe.adapters.vision.chat import placeholder_tokenizer
    from floe.adapters.vision.model import llm_width, save
    from floe.adapters.vision.train import encode, greedy, new_adapter
    from floe.server.runtime.model import base_fingerprint

    threads, started = torch.get_num_threads(), time.process_time()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            rng = random.Random(TRAIN_SEED)
            adapter = new_adapter(llm_width(base_dir), None, image_size=IMAGE_SIZE, hidden_size=TOWER_WIDTH,
                                  feature_layer=-1, seed=0)
            lm = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval().requires_grad_(False)
            tokenizer, placeholder = placeholder_tokenizer(base_dir)
            targets, caption_loss = fit_caption_tokens(lm, tokenizer, placeholder, adapter.num_tokens, rng)
            encoder_loss = fit_encoder(adapter, targets, rng)
            check = samples(VAL_PICTURES, VAL_SEED, PROMPTS[0])
            answers = greedy(adapter, lm, tokenizer, placeholder, encode(check, tokenizer, placeholder, adapter))
            val = score(answers, [tuple(s.target.split()[1:3]) for s in check])
        report = {"recipe": "caption soft tokens through the frozen LLM, then tower + projector regressed "
                            "onto them from fresh pictures", "caption_steps": CAPTION_STEPS,
                  "encoder_steps": ENCODER_STEPS, "caption_loss": round(caption_loss, 4),
                  "encoder_relative_mse": round(encoder_loss, 4), "validation": val,
                  "cpu_seconds": round(time.process_time() - started, 1)}
        save(out, adapter, base_fingerprint(base_dir), extra={
            "trained": ["projector", "tower"], "training": {**report, "data": "synthetic coloured shapes",
                                                            "colours": list(COLOURS), "shapes": list(SHAPES)}})
    finally:
        torch.set_num_threads(threads)
    return Path(out)
