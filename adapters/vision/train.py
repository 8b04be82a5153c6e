"""Fit a vision adapter's projector with the LLM (and, by default, the tower) frozen.

Data: OpenAI's chat fine-tuning JSONL, one conversation a line; the last assistant turn is the
target, everything before it the prompt, rendered exactly as vLLM renders it for the served
adapter (floe.adapters.vision.chat: the base's chat template, one placeholder per image
expanded to the image's soft tokens). The loss is the cross-entropy of the target tokens and the
end-of-turn token, teacher-forced through the frozen LLM on `inputs_embeds`. A validation split
is held out; the weights with the best validation loss are kept, and the greedy exact-match
accuracy on the validation split is reported.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import torch

from floe.adapters.vision.chat import PLACEHOLDER, expand, placeholder_tokenizer, render_ids
from floe.adapters.vision.images import decode_image, image_url
from floe.adapters.vision.model import VisionAdapter
from floe.server.training import Progress, TrainSettings, chat_lines, descend

MAX_PIXELS = 16_000_000


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    lr: float = 2e-3
    tower_lr: float = 5e-4
    train_tower: bool = False  # the trainer's default: LLM and tower frozen, the projector trains
    val_fraction: float = 0.1
    max_steps: int | None = None
    eval_limit: int = 200  # validation conversations decoded greedily at the end
    recipe: str = "auto"  # "distill", "end_to_end", or auto: distill when answers repeat (below)
    distill_steps: int = 200


@dataclass
class Sample:
    """One conversation: the prompt turns (images as parts), its Pillow images, the target text."""

    prompt: list[dict[str, Any]]
    images: list
    target: str


@dataclass
class Encoded:
    ids: list[int]  # prompt (placeholders expanded) + target + end of turn
    n_prompt: int
    pixels: np.ndarray  # [n_images, 3, S, S]
    target: str
    features: torch.Tensor | None = None  # the frozen tower's output, computed once


# -- data --------------------------------------------------------------------------------------------
def _image_bytes(url: str, root: Path, param: str) -> bytes:
    from floe.server.media import data_url

    if url[:5].lower() == "data:":
        return data_url(url, param, 64 * 2**20).data
    path = Path(unquote(urlsplit(url).path)) if url.startswith("file://") else Path(url)
    path = (root / path if not path.is_absolute() else path).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{param}: {path} is outside the allowed image root {root}")
    return path.read_bytes()


def read_jsonl(path: Path, image_root: Path | None = None) -> list[Sample]:
    """OpenAI chat fine-tuning JSONL -> samples (images: data URLs or files under `image_root`)."""
    root = Path(image_root or Path(path).parent)
    samples = []
    for n, record in chat_lines(path):
        messages = record["messages"]
        try:
            last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: the conversation has no assistant turn (the target)") from exc
        target = messages[last]["content"]
        if isinstance(target, list):
            target = "".join(p.get("text", "") for p in target if isinstance(p, dict))
        prompt, images = messages[:last], []
        for i, message in enumerate(prompt):
            for j, part in enumerate(message.get("content") if isinstance(message.get("content"), list) else ()):
                if isinstance(part, dict) and part.get("type") == "image_url":
                    param = f"line {n}: messages[{i}].content[{j}]"
                    try:
                        images.append(decode_image(_image_bytes(image_url(part, param), root, param), param,
                                                   MAX_PIXELS))
                    except Exception as exc:
                        raise ValueError(f"{path}: {exc}") from exc
        if not images:
            raise ValueError(f"{path}:{n}: the prompt has no image_url part")
        samples.append(Sample(prompt, images, str(target)))
    return samples


def encode(samples: list[Sample], tokenizer: Any, placeholder: int, adapter: VisionAdapter) -> list[Encoded]:
    eos = tokenizer.eos_token_id
    out = []
    for s in samples:
        ids = render_ids(tokenizer, s.prompt, add_generation_prompt=True)
        ids, _ = expand(ids, placeholder, [adapter.num_tokens] * len(s.images))
        target = tokenizer(s.target, add_special_tokens=False)["input_ids"] + [eos]
        out.append(Encoded(ids + target, len(ids), adapter.preprocess(s.images), s.target))
    return out


# -- the model pass ----------------------------------------------------------------------------------
def batch_embeds(adapter: VisionAdapter | None, embeddings: torch.Tensor, placeholder: int, items: list[Encoded],
                 *, prompt_only: bool = False, left: bool = False, soft: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Padded inputs_embeds [B, T, d] with the soft tokens (the adapter's, or `soft` [images, N, d])
    in place, the attention mask, the id rows."""
    rows = [e.ids[:e.n_prompt] if prompt_only else e.ids for e in items]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[b, sl], mask[b, sl] = torch.tensor(r), 1
    soft_at = (ids == placeholder) & mask.bool()
    embeds = embeddings[torch.where(soft_at, 0, ids)]
    if soft is not None:
        pass
    elif all(e.features is not None for e in items):
        soft = adapter.projector(torch.cat([e.features for e in items])).float()
    else:
        assert adapter is not None
        soft = adapter(torch.from_numpy(np.concatenate([e.pixels for e in items])))
    embeds = embeds.clone()
    embeds[soft_at] = soft.reshape(-1, soft.shape[-1]).to(embeds.dtype)
    return embeds, mask, rows


def loss_of(adapter: VisionAdapter | None, lm: Any, placeholder: int, items: list[Encoded],
            soft: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of the target tokens (teacher forcing through the frozen LLM)."""
    embeds, mask, rows = batch_embeds(adapter, lm.get_input_embeddings().weight, placeholder, items, soft=soft)
    hidden = lm.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    positions, labels = [], []
    for b, (e, r) in enumerate(zip(items, rows)):
        for t in range(e.n_prompt, len(r)):  # position t-1 predicts token t
            positions.append((b, t - 1))
            labels.append(r[t])
    index = torch.tensor(positions)
    logits = lm.lm_head(hidden[index[:, 0], index[:, 1]])
    return torch.nn.functional.cross_entropy(logits.float(), torch.tensor(labels))


@torch.no_grad()
def greedy(adapter: VisionAdapter, lm: Any, tokenizer: Any, placeholder: int, items: list[Encoded],
           max_new_tokens: int = 12, batch_size: int = 32) -> list[str]:
    """Greedy answers (left-padded batches through `generate(inputs_embeds=...)`)."""
    answers = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        embeds, mask, _ = batch_embeds(adapter, lm.get_input_embeddings().weight, placeholder, chunk,
                                       prompt_only=True, left=True)
        out = lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                          do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out.tolist()]
    return answers


def split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(items) * fraction)) if len(items) > 1 else 0
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def distills(train_set: list[Encoded], tcfg: TrainConfig) -> bool:
    """Auto: one image per conversation and few distinct answers (each seen 4 times on average)."""
    if tcfg.recipe != "auto":
        return tcfg.recipe == "distill"
    answers = {e.target for e in train_set}
    return all(e.pixels.shape[0] == 1 for e in train_set) and len(answers) <= min(256, len(train_set) // 4)


def answer_tokens(lm: Any, placeholder: int, train_set: list[Encoded], n_tokens: int, tcfg: TrainConfig,
                  rng: random.Random) -> tuple[torch.Tensor, dict[str, int], float]:
    """Distillation stage 1: per distinct answer, free soft tokens [n_tokens, d] that make the frozen
    LLM give it (teacher forcing over the training prompts)."""
    index = {t: k for k, t in enumerate(sorted({e.target for e in train_set}))}
    tokens = torch.nn.Parameter(torch.randn(len(index), n_tokens, lm.config.hidden_size) * 0.3)
    opt = torch.optim.Adam([tokens], lr=0.05)
    loss = torch.zeros(())
    for _ in range(tcfg.distill_steps):
        batch = rng.sample(train_set, min(tcfg.batch_size, len(train_set)))
        loss = loss_of(None, lm, placeholder, batch, soft=tokens[[index[e.target] for e in batch]])
        last = descend(opt, loss)
    return tokens.detach(), index, last


def regression_loss(adapter: VisionAdapter, items: list[Encoded], targets: torch.Tensor, index: dict[str, int],
                    scale: float) -> torch.Tensor:
    if all(e.features is not None for e in items):
        soft = adapter.projector(torch.cat([e.features for e in items])).float()
    else:
        soft = adapter(torch.from_numpy(np.concatenate([e.pixels for e in items])))
    return ((soft - targets[[index[e.target] for e in items]]) ** 2).mean() / scale


def train(adapter: VisionAdapter, lm: Any, tokenizer: Any, placeholder: int, train_set: list[Encoded],
          val_set: list[Encoded], tcfg: TrainConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Fit the projector (and the tower when `train_tower`); keeps the best validation loss.

    End to end: the answers' cross-entropy through the frozen LLM. Distilled (answers that repeat,
    e.g. labels): first free soft tokens per answer through the LLM, then the adapter regressed
    onto its answer's tokens (MSE, learning rate decayed linearly), which learns far faster per
    step through a frozen LLM that context steers only weakly (floe.adapters.vision.demo)."""
    torch.manual_seed(tcfg.seed)
    lm.requires_grad_(False).eval()
    adapter.requires_grad_(False)
    adapter.projector.requires_grad_(True)
    groups = [{"params": list(adapter.projector.parameters()), "lr": tcfg.lr}]
    if tcfg.train_tower:
        adapter.tower.requires_grad_(True)
        groups.append({"params": list(adapter.tower.parameters()), "lr": tcfg.tower_lr})
    else:
        with torch.no_grad():  # a frozen tower: its features once, not every epoch
            for e in train_set + val_set:
                e.features = adapter.features(torch.from_numpy(e.pixels))
    opt = torch.optim.Adam(groups)
    steps_per_epoch = math.ceil(len(train_set) / tcfg.batch_size)
    total = min(tcfg.epochs * steps_per_epoch, tcfg.max_steps or 10**9)
    best: tuple[float, dict] = (float("inf"), {k: v.clone() for k, v in adapter.state_dict().items()})
    rng, step, metrics, started = random.Random(tcfg.seed), 0, {}, time.monotonic()
    distill = distills(train_set, tcfg)
    if distill:
        targets, index, metrics["answer_token_loss"] = answer_tokens(lm, placeholder, train_set,
                                                                     adapter.num_tokens, tcfg, rng)
        scale = float((targets ** 2).mean())
        decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / total)
    while step < total:
        adapter.train()
        order = list(range(len(train_set)))
        rng.shuffle(order)
        for i in range(0, len(order), tcfg.batch_size):
            batch = [train_set[j] for j in order[i:i + tcfg.batch_size]]
            loss = (regression_loss(adapter, batch, targets, index, scale) if distill
                    else loss_of(adapter, lm, placeholder, batch))
            metrics["train_mse" if distill else "train_loss"] = descend(opt, loss, sched=decay if distill else None)
            step += 1
            if progress:
                progress(step, total, metrics)
            if step >= total:
                break
        adapter.eval()
        if val_set:
            with torch.no_grad():
                val = sum(float(loss_of(adapter, lm, placeholder, val_set[i:i + 64])) * len(val_set[i:i + 64])
                          for i in range(0, len(val_set), 64)) / len(val_set)
            metrics["val_loss"] = val
            if val < best[0]:
                best = (val, {k: v.clone() for k, v in adapter.state_dict().items()})
            if progress:
                progress(step, total, metrics)
    if val_set:
        adapter.load_state_dict(best[1])
    adapter.eval().requires_grad_(False)
    report: dict[str, Any] = {"steps": step, "train_conversations": len(train_set),
                              "val_conversations": len(val_set), "seconds": round(time.monotonic() - started, 1),
                              "trained": ["projector", "tower"] if tcfg.train_tower else ["projector"],
                              "recipe": "distill" if distill else "end_to_end"}
    if val_set:
        picked = val_set[:tcfg.eval_limit]
        answers = greedy(adapter, lm, tokenizer, placeholder, picked)
        report |= {"best_val_loss": round(best[0], 4),
                   "val_exact_match": sum(a == e.target for a, e in zip(answers, picked)) / len(picked)}
    return report


def new_adapter(llm_hidden: int, tower_dir: Path | None, *, image_size: int = 32, patch_size: int = 8,
                hidden_size: int = 64, num_layers: int = 2, feature_layer: int = -2, seed: int = 0) -> VisionAdapter:
    """A fresh projector on `tower_dir`'s tower (a vision adapter's, whose config (feature layer,
    select strategy, mean / std) is kept, or a HF vision model dir), else on a seeded tiny CLIP tower."""
    from floe.adapters.vision import TOWER, VisionConfig, VisionKind
    from floe.adapters.vision.images import Preprocessor
    from floe.adapters.vision.model import Projector, load_tower, make_tower

    cfg = VisionConfig(image_size=image_size, feature_layer=feature_layer)
    if tower_dir is not None and (Path(tower_dir) / TOWER).is_dir():
        cfg = VisionConfig.from_dict(VisionKind.read_manifest(Path(tower_dir)).get("config") or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if tower_dir is None:
            tower, source = make_tower("clip", image_size=image_size, patch_size=patch_size,
                                       hidden_size=hidden_size, num_layers=num_layers), None
        else:
            source = Path(tower_dir) / TOWER if (Path(tower_dir) / TOWER).is_dir() else Path(tower_dir)
            tower = load_tower(source)
        vision_cfg = getattr(tower.config, "vision_config", None) or tower.config
        projector = Projector(vision_cfg.hidden_size * len(cfg.layers), llm_hidden, cfg.projector_act)
    return VisionAdapter(tower, projector, cfg, Preprocessor(source, cfg, vision_cfg.image_size))


def train_to_dir(model_dir: Path, data: Path, out: Path, tcfg: TrainConfig, *, tower: Path | None = None,
                 image_root: Path | None = None, progress: Progress | None = None) -> tuple[Path, dict]:
    from transformers import AutoModelForCausalLM

    from floe.adapters.vision.model import llm_width, save
    from floe.server.runtime.model import base_fingerprint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        samples = read_jsonl(data, image_root)
        adapter = new_adapter(llm_width(model_dir), tower, seed=tcfg.seed)
        lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        tokenizer, placeholder = placeholder_tokenizer(model_dir)
        train_set, val_set = split(encode(samples, tokenizer, placeholder, adapter), tcfg.val_fraction, tcfg.seed)
        report = train(adapter, lm, tokenizer, placeholder, train_set, val_set, tcfg, progress)
        save(out, adapter, base_fingerprint(model_dir), extra={"trained": report["trained"],
                                                              "training": {**report, "data": Path(data).name}})
    finally:
        torch.set_num_threads(threads)
    return Path(out), report


__all__ = ["PLACEHOLDER", "TrainConfig", "encode", "greedy", "read_jsonl", "train", "train_to_dir"]
