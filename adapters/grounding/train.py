"""Fit a grounding adapter's mask head on a frozen LMM (and, optionally, its projector copy).

Data: a RefCOCO-style set (`data.py`). Every (sentence, mask) pair is one sample; its attention
maps come from the same teacher-forced pass the server runs (`model.sequence`, `model.embed`,
`model.attention_maps`: the sentence is the answer to the adapter's prompt). The head trains on
them with F-LMM's loss (per-pixel binary cross-entropy + dice, against the mask resized to the
head's resolution).

F-LMM freezes the whole LMM: an LMM trained on captions already attends from a phrase's tokens to
its object, and the maps are computed once. floe's built-in base is a random tiny LLM whose
attention grounds nothing (a head on its maps does no better than one fed uniform attention), so
`tune_projector` also fits the grounding adapter's own copy of the vision projector, through the
frozen LLM's attention, until the maps carry the phrase: the base LLM and the vision tower stay
frozen, the served vision adapter (which answers `prompt` requests) is untouched, and the maps
are recomputed every step. Validation: the refs of split `val` (else a seeded tenth of the
images), mIoU at image resolution after every epoch (at threshold 0.5); the epoch with the best
validation mIoU is kept, and its mask threshold is then chosen on the validation set among
THRESHOLDS (`threshold`, `val_miou` in the report).
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
    tune_projector: bool = False  # also fit the adapter's projector copy (a base whose attention does not ground)
    projector_lr: float = 1e-2


@dataclass
class Sample:
    maps: torch.Tensor  # [layers*heads, h, w], from the projector as it is now
    mask: np.ndarray  # uint8 [H, W] at image resolution
    sentence: str
    features: torch.Tensor | None = None  # [tokens, d_tower]: the frozen tower's, computed once
    seq: Any = None  # its model.Sequence


def split(refs: list[Ref], fraction: float, seed: int) -> tuple[list[Ref], list[Ref]]:
    val = [r for r in refs if r.split == "val"]
    if val:
        return [r for r in refs if r.split == "train"] or [r for r in refs if r.split != "val"], val
    images = sorted({r.image for r in refs})
    random.Random(seed).shuffle(images)
    held = set(images[:max(1, int(len(images) * fraction))]) if len(images) > 1 else set()
    return [r for r in refs if r.image not in held], [r for r in refs if r.image in held]


def batch_maps(adapter: GroundingAdapter, llm: Any, samples: list[Sample]) -> torch.Tensor:
    """[B, layers*heads, h, w]: the samples' maps through the adapter's projector as it is now
    (differentiable in the projector when grad is on)."""
    soft = adapter.vision.projector(torch.stack([s.features for s in samples])).float()
    seqs = [s.seq for s in samples]
    embeds = [embed(llm, seq, rows, adapter.placeholder) for seq, rows in zip(seqs, soft)]
    n = adapter.vision.num_tokens
    return torch.stack([m[0] for m in attention_maps(llm, seqs, embeds, [n] * len(seqs),
                                                     [adapter.cfg.grid] * len(seqs))])


def refresh(adapter: GroundingAdapter, llm: Any, samples: list[Sample], batch: int = 64) -> None:
    """Recompute every sample's maps from the current projector."""
    with torch.no_grad():
        for start in range(0, len(samples), batch):
            chunk = samples[start:start + batch]
            for s, m in zip(chunk, batch_maps(adapter, llm, chunk)):
                s.maps = m


def extract(adapter: GroundingAdapter, llm: Any, pairs: list[tuple[Ref, str]], batch: int = 32) -> list[Sample]:
    """The attention maps the served head would see for each (ref, sentence), with the frozen
    tower's features and the sequence kept for recomputing them."""
    from PIL import Image

    out: list[Sample] = []
    prompt = adapter.cfg.prompt
    with torch.no_grad():
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            pixels = adapter.vision.preprocess([Image.open(ref.image).convert("RGB") for ref, _ in chunk])
            features = adapter.vision.features(torch.from_numpy(pixels))
            out += [Sample(torch.empty(0), ref.mask, s, f, sequence(adapter, prompt, s, [(0, len(s))]))
                    for f, (ref, s) in zip(features, chunk)]
    refresh(adapter, llm, out, batch)
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


def fit(adapter: GroundingAdapter, llm: Any, train_set: list[Sample], val_set: list[Sample], tcfg: TrainConfig,
        progress: Progress | None = None) -> dict[str, Any]:
    """Train the head (and with `tune_projector` the projector copy); keep the best epoch's."""
    head, projector = adapter.head, adapter.vision.projector
    tuned = [projector] if tcfg.tune_projector else []
    head.requires_grad_(True)
    for module in tuned:
        module.requires_grad_(True)
    rng = torch.Generator().manual_seed(tcfg.seed)
    target = targets(head, train_set)
    steps_per_epoch = max(1, -(-len(train_set) // tcfg.batch_size))
    total = steps_per_epoch * tcfg.epochs
    groups = [{"params": list(head.parameters()), "lr": tcfg.lr}]
    groups += [{"params": list(m.parameters()), "lr": tcfg.projector_lr} for m in tuned]
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    decay = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=total,
                                                pct_start=0.1)
    best, best_state, history, step = -1.0, None, [], 0
    for _epoch in range(tcfg.epochs):
        head.train()
        order = torch.randperm(len(train_set), generator=rng)
        for k in range(steps_per_epoch):
            idx = order[k * tcfg.batch_size:(k + 1) * tcfg.batch_size]
            chunk = [train_set[i] for i in idx]
            maps = batch_maps(adapter, llm, chunk) if tuned else torch.stack([s.maps for s in chunk])
            loss = descend(opt, loss_fn(head(maps), target[idx]), sched=decay)
            step += 1
        if tuned:
            refresh(adapter, llm, val_set)
        miou, _ = miou_ciou(list(zip(predict(head, val_set, adapter.cfg.threshold), [s.mask for s in val_set])))
        history.append(round(miou, 4))
        if miou > best:
            best, best_state = miou, [{k: v.detach().clone() for k, v in m.state_dict().items()}
                                      for m in (head, *tuned)]
        if progress is not None:
            progress(step, total, {"loss": loss, "val_miou": miou})
    for module, state in zip((head, *tuned), best_state or []):
        module.load_state_dict(state)
    for module in (head, *tuned):
        module.eval().requires_grad_(False)
    if tuned:
        refresh(adapter, llm, val_set)
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
    report = fit(adapter, llm, train_set, val_set, tcfg, progress)
    threshold, calibrated = calibrate(adapter.head, val_set)
    adapter.cfg = dataclasses.replace(adapter.cfg, threshold=threshold)
    report.update(threshold=threshold, val_miou=round(calibrated, 4))
    union = [np.clip(sum(r.mask for r in refs if r.image == s_ref.image), 0, 1).astype(np.uint8)
             for s_ref, _ in pairs_of(val_refs)]
    report["val_union_miou"] = round(miou_ciou(list(zip(union, [s.mask for s in val_set])))[0], 4)
    report.update(train_pairs=len(train_set), val_pairs=len(val_set),
                  cpu_seconds=round(time.process_time() - started, 1))
    trained = ["mask_head", "projector"] if tcfg.tune_projector else ["mask_head"]
    save(out, vision_dir, vision_name, adapter.head, adapter.cfg, llm.fingerprint,
         projector=adapter.vision.projector if tcfg.tune_projector else None,
         extra={"trained": trained, "training": {**report, **(extra or {})}})
    return Path(out), report
