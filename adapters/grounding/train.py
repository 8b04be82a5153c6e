"""Fit a grounding adapter's mask head; the LMM (base and vision adapter) stays frozen.

Data: a RefCOCO-style set (`data.py`). Every (sentence, mask) pair is one sample; its attention
maps come from the same teacher-forced pass the server runs (`model.sequence`, `model.embed`,
`model.attention_maps`: the sentence is the answer to the adapter's prompt), computed once, as
the LMM is frozen. The head then trains on them with F-LMM's loss (per-pixel binary
cross-entropy + dice, against the mask resized to the head's resolution). Validation: the refs of
split `val` (else a seeded tenth of the images), mIoU at image resolution after every epoch (at
threshold 0.5); the head with the best validation mIoU is kept, and its mask threshold is then
chosen on the validation set among THRESHOLDS (`threshold`, `val_miou` in the report).
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from floe.adapters.grounding import GroundingConfig
from floe.adapters.grounding.data import Ref, read
from floe.adapters.grounding.head import MaskHead
from floe.adapters.grounding.masks import miou_ciou
from floe.adapters.grounding.model import GroundingAdapter, attention_maps, embed, sequence
from floe.server.training import Progress, descend

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 16
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    channels: int = 16
    upsample: int = 4
    prompt: str = GroundingConfig.prompt
    val_fraction: float = 0.1  # when the set has no `val` refs: a seeded share of its images
    max_samples: int | None = None  # cap on training pairs (a quick run)


@dataclass
class Sample:
    maps: torch.Tensor  # [layers*heads, h, w]
    mask: np.ndarray  # uint8 [H, W] at image resolution
    sentence: str


def split(refs: list[Ref], fraction: float, seed: int) -> tuple[list[Ref], list[Ref]]:
    val = [r for r in refs if r.split == "val"]
    if val:
        return [r for r in refs if r.split == "train"] or [r for r in refs if r.split != "val"], val
    images = sorted({r.image for r in refs})
    random.Random(seed).shuffle(images)
    held = set(images[:max(1, int(len(images) * fraction))]) if len(images) > 1 else set()
    return [r for r in refs if r.image not in held], [r for r in refs if r.image in held]


def extract(adapter: GroundingAdapter, llm: Any, pairs: list[tuple[Ref, str]], batch: int = 32) -> list[Sample]:
    """The attention maps the served head would see for each (ref, sentence)."""
    from PIL import Image

    out: list[Sample] = []
    prompt = adapter.cfg.prompt
    with torch.no_grad():
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            pixels = adapter.vision.preprocess([Image.open(ref.image).convert("RGB") for ref, _ in chunk])
            soft = adapter.vision(torch.from_numpy(pixels))
            seqs = [sequence(adapter, prompt, s, [(0, len(s))]) for _, s in chunk]
            embeds = [embed(llm, seq, rows, adapter.placeholder) for seq, rows in zip(seqs, soft)]
            n = adapter.vision.num_tokens
            maps = attention_maps(llm, seqs, embeds, [n] * len(seqs), [adapter.cfg.grid] * len(seqs))
            out += [Sample(m[0], ref.mask, s) for m, (ref, s) in zip(maps, chunk)]
    return out


def targets(head: MaskHead, samples: list[Sample]) -> torch.Tensor:
    """Masks at the head's resolution (area-resized, so border pixels are fractions)."""
    size = (head.grid[0] * head.upsample, head.grid[1] * head.upsample)
    return torch.cat([F.interpolate(torch.from_numpy(s.mask).float()[None, None], size=size, mode="area")[0]
                      for s in samples])


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """F-LMM's mask loss: binary cross-entropy + dice."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p, t = torch.sigmoid(logits).flatten(1), target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + dice.mean()


def predict(head: MaskHead, samples: list[Sample], threshold: float, *, uniform: bool = False,
            batch: int = 256) -> list[np.ndarray]:
    """Masks at each sample's image resolution, as the server computes them."""
    out = []
    head.eval()
    with torch.no_grad():
        for start in range(0, len(samples), batch):
            chunk = samples[start:start + batch]
            x = torch.stack([s.maps for s in chunk])
            if uniform:
                x = torch.full_like(x, 1.0 / (x.shape[-1] * x.shape[-2]))
            logits = head(x)
            for s, lg in zip(chunk, logits):
                up = F.interpolate(lg[None, None], size=s.mask.shape, mode="bilinear", align_corners=False)[0, 0]
                out.append((torch.sigmoid(up) > threshold).numpy().astype(np.uint8))
    return out


def fit(head: MaskHead, train_set: list[Sample], val_set: list[Sample], tcfg: TrainConfig, threshold: float,
        progress: Progress | None = None) -> dict[str, Any]:
    rng = torch.Generator().manual_seed(tcfg.seed)
    maps, target = torch.stack([s.maps for s in train_set]), targets(head, train_set)
    steps_per_epoch = max(1, -(-len(train_set) // tcfg.batch_size))
    total = steps_per_epoch * tcfg.epochs
    opt = torch.optim.AdamW(head.parameters(), lr=tcfg.lr, weight_decay=1e-4)
    decay = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.lr, total_steps=total, pct_start=0.1)
    best, best_state, history, step = -1.0, None, [], 0
    for _epoch in range(tcfg.epochs):
        head.train()
        order = torch.randperm(len(train_set), generator=rng)
        for k in range(steps_per_epoch):
            idx = order[k * tcfg.batch_size:(k + 1) * tcfg.batch_size]
            loss = loss_fn(head(maps[idx]), target[idx])
            descend(opt, loss, sched=decay)
            step += 1
        miou, _ = miou_ciou(list(zip(predict(head, val_set, threshold), [s.mask for s in val_set])))
        history.append(round(miou, 4))
        if miou > best:
            best, best_state = miou, {k: v.detach().clone() for k, v in head.state_dict().items()}
        if progress is not None:
            progress(step, total, {"loss": float(loss.detach()), "val_miou": miou})
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval().requires_grad_(False)
    return {"best_val_miou": round(best, 4), "val_miou_per_epoch": history, "steps": step}


def calibrate(head: MaskHead, val_set: list[Sample]) -> tuple[float, float]:
    """The mask threshold with the best validation mIoU (ties: the one nearest 0.5), and that mIoU."""
    scores = {t: miou_ciou(list(zip(predict(head, val_set, t), [s.mask for s in val_set])))[0] for t in THRESHOLDS}
    best = max(scores.values())
    threshold = min((t for t, v in scores.items() if v == best), key=lambda t: abs(t - 0.5))
    return threshold, best


def new_adapter(vision_dir: Path, llm: Any, tcfg: TrainConfig) -> GroundingAdapter:
    """A fresh (seeded) head on the vision adapter, for the FrozenModel `llm`."""
    from floe.adapters.vision.chat import placeholder_tokenizer
    from floe.adapters.vision.model import load as load_vision

    vision = load_vision(Path(vision_dir), llm.hidden_size)
    side = int(round(vision.num_tokens ** 0.5))
    if side * side != vision.num_tokens:
        raise ValueError(f"the vision adapter's {vision.num_tokens} image tokens are not a square grid")
    cfg = GroundingConfig(attention_channels=llm.num_layers * llm.config.num_attention_heads, grid=(side, side),
                          prompt=tcfg.prompt, upsample=tcfg.upsample, channels=tcfg.channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tcfg.seed)
        head = MaskHead(cfg.attention_channels, cfg.grid, cfg.upsample, cfg.channels)
    tokenizer, placeholder = placeholder_tokenizer(llm.model_dir)
    return GroundingAdapter(vision, head, cfg, {}, tokenizer, placeholder)


def pairs_of(refs: list[Ref]) -> list[tuple[Ref, str]]:
    return [(r, s) for r in refs for s in r.sentences]


def train_to_dir(model_dir: Path, data: Path, out: Path, vision_dir: Path, vision_name: str, tcfg: TrainConfig, *,
                 progress: Progress | None = None, extra: dict[str, Any] | None = None) -> tuple[Path, dict]:
    """Read the set, extract attention maps, fit the head, write the adapter; returns the report."""
    from floe.adapters.grounding.model import save
    from floe.server.runtime.model import FrozenModel

    started = time.process_time()
    refs = read(Path(data))
    train_refs, val_refs = split(refs, tcfg.val_fraction, tcfg.seed)
    if not train_refs or not val_refs:
        raise ValueError(f"{data}: need training and validation refs (split `val`, or several images)")
    llm = FrozenModel(model_dir)
    adapter = new_adapter(vision_dir, llm, tcfg)
    train_pairs = pairs_of(train_refs)
    if tcfg.max_samples:
        random.Random(tcfg.seed).shuffle(train_pairs)
        train_pairs = train_pairs[:tcfg.max_samples]
    train_set, val_set = extract(adapter, llm, train_pairs), extract(adapter, llm, pairs_of(val_refs))
    report = fit(adapter.head, train_set, val_set, tcfg, adapter.cfg.threshold, progress)
    threshold, calibrated = calibrate(adapter.head, val_set)
    adapter.cfg = dataclasses.replace(adapter.cfg, threshold=threshold)
    report.update(threshold=threshold, val_miou=round(calibrated, 4))
    union = [np.clip(sum(r.mask for r in refs if r.image == s_ref.image), 0, 1).astype(np.uint8)
             for s_ref, _ in pairs_of(val_refs)]
    report["val_union_miou"] = round(miou_ciou(list(zip(union, [s.mask for s in val_set])))[0], 4)
    report.update(train_pairs=len(train_set), val_pairs=len(val_set),
                  cpu_seconds=round(time.process_time() - started, 1))
    save(out, vision_dir, vision_name, adapter.head, adapter.cfg, llm.fingerprint,
         extra={"trained": ["mask_head"], "training": {**report, **(extra or {})}})
    return Path(out), report
