"""Fit an APT aligner with the LLM and the audio encoder frozen (`floe adapters train audio`).

Data: OpenAI's chat fine-tuning JSONL, one `{"messages": [...]}` per line; user turns hold
`input_audio` parts (`{"data": <base64>, "format": "wav" | "mp3"}`, or, for training only,
`{"path": "clip.wav"}` relative to the JSONL file) and optional text; the last message is the
assistant's target. Each example is rendered exactly as served (reference.py: the chat template,
one placeholder per clip expanded to 1 + N rows); the loss is cross-entropy on the target turn's
tokens up to and including the end-of-turn token, through the frozen transformers LLM
(`inputs_embeds`). Trained: Q-Former, projection, indicator. The encoder's states are computed once.
A seeded split is held out for validation; the weights with the best validation loss are kept.
"""

from __future__ import annotations

import base64
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from floe.adapters.audio import AudioConfig
from floe.adapters.audio.decode import fbank
from floe.adapters.audio.model import AudioModel, EmbeddingRows, clip_pcm, init_output_scale, instruction_of
from floe.adapters.audio.reference import is_clip, placeholder_conversation, placeholder_tokenizer, render, splice
from floe.server.errors import InvalidRequest
from floe.server.training import Progress, TrainSettings, chat_lines, descend

MAX_AUDIO_S = 60.0
MAX_BYTES = 64 * 2**20


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    epochs: int = 20
    lr: float = 2e-3
    val_fraction: float = 0.1


@dataclass
class Example:
    ids: list[int]  # the whole conversation, one placeholder per clip
    labels: list[int]  # -100 except the target turn's tokens
    clips: list[tuple[torch.Tensor, torch.Tensor]]  # (encoder states [S, e], instruction rows [L, d])


def read_jsonl(path: Path) -> list[list[dict[str, Any]]]:
    """The conversations of a fine-tuning JSONL, `path` audio parts inlined as base64."""
    out = []
    for _, record in chat_lines(path):
        messages = record["messages"]
        for message in messages:
            for part in message.get("content") if isinstance(message.get("content"), list) else []:
                audio = part.get("input_audio") if isinstance(part, dict) else None
                if isinstance(audio, dict) and "path" in audio and "data" not in audio:
                    file = Path(path).parent / audio["path"]
                    audio["data"] = base64.b64encode(file.read_bytes()).decode()
                    audio.setdefault("format", file.suffix.lstrip(".").lower())
        out.append(messages)
    return out


class Preparer:
    """Conversations -> `Example`s: rendered token ids, labels, frozen encoder states."""

    def __init__(self, model_dir: Path, model: AudioModel) -> None:
        self.tokenizer, self.pid = placeholder_tokenizer(model_dir)
        self.eos = self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)
        self.rows = EmbeddingRows(model_dir)
        self.model = model

    def text_rows(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:self.model.cfg.max_text_tokens]
        return self.rows(list(ids))

    @torch.no_grad()
    def __call__(self, messages: list[dict[str, Any]], where: str = "") -> Example:
        if messages[-1].get("role") != "assistant":
            raise ValueError(f"{where}the last message must be the assistant's target")
        prefix = render(self.tokenizer, placeholder_conversation(messages[:-1]), add_generation_prompt=True)
        full = render(self.tokenizer, placeholder_conversation(messages), add_generation_prompt=False)
        if full[:len(prefix)] != prefix or len(full) == len(prefix):
            raise ValueError(f"{where}the chat template does not render the target after the prompt")
        answer = full[len(prefix):]
        answer = answer[:answer.index(self.eos) + 1] if self.eos in answer else answer
        clips = []
        for i, message in enumerate(messages[:-1]):
            content = message.get("content")
            for j, part in enumerate(content if isinstance(content, list) else []):
                if is_clip(part):
                    if part["type"] != "input_audio":
                        raise ValueError(f"{where}training takes input_audio parts, not {part['type']}")
                    try:
                        pcm = clip_pcm(part, f"messages[{i}].content[{j}].input_audio", MAX_BYTES, MAX_AUDIO_S)
                    except InvalidRequest as exc:
                        raise ValueError(f"{where}{exc.message}") from exc
                    feats = torch.from_numpy(fbank(pcm, self.model.cfg.num_mel_bins))
                    states, _ = self.model.encoder(feats[None], torch.tensor([feats.shape[0]]))
                    clips.append((states[0], self.text_rows(instruction_of(content))))
        return Example(prefix + answer, [-100] * len(prefix) + answer, clips)


def pad(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad [n_i, d] tensors -> [B, max n, d] and a valid mask [B, max n]."""
    width = tensors[0].shape[-1]
    longest = max(t.shape[0] for t in tensors)
    out = torch.zeros(len(tensors), longest, width)
    mask = torch.zeros(len(tensors), longest, dtype=torch.bool)
    for i, t in enumerate(tensors):
        out[i, :t.shape[0]], mask[i, :t.shape[0]] = t, True
    return out, mask


def batch_inputs(model: AudioModel, table: torch.Tensor, pid: int, batch: list[Example]):
    """(inputs_embeds [B, T, d], attention_mask [B, T], labels [B, T]), right-padded."""
    clips = [c for ex in batch for c in ex.clips]
    tokens: list[torch.Tensor] = []
    if clips:
        audio, audio_mask = pad([s for s, _ in clips])
        text, text_mask = pad([t if t.shape[0] else torch.zeros(1, table.shape[1]) for _, t in clips])
        text_mask &= torch.tensor([t.shape[0] > 0 for _, t in clips])[:, None]
        tokens = list(model.aligner(audio, audio_mask, text, text_mask))
    rows, labels, k = [], [], 0
    for ex in batch:
        n = len(ex.clips)
        safe = torch.tensor([0 if t == pid else t for t in ex.ids])
        embeds, expanded = splice(table[safe], ex.ids, pid, tokens[k:k + n])
        k += n
        lab = [[-100] * len(tokens[0]) if t == pid else [label] for t, label in zip(ex.ids, ex.labels)]
        labels.append(torch.tensor([x for xs in lab for x in xs]))
        assert len(labels[-1]) == len(expanded)
        rows.append(embeds)
    embeds, mask = pad(rows)
    targets = torch.full(mask.shape, -100, dtype=torch.long)
    for i, lb in enumerate(labels):
        targets[i, :len(lb)] = lb
    return embeds, mask.long(), targets


def loss_of(llm, model: AudioModel, table: torch.Tensor, pid: int, batch: list[Example]) -> torch.Tensor:
    embeds, mask, labels = batch_inputs(model, table, pid, batch)
    logits = llm(inputs_embeds=embeds, attention_mask=mask).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = min(n - 1, max(1, round(n * fraction))) if n > 1 and fraction > 0 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def train_aligner(llm, model: AudioModel, table: torch.Tensor, pid: int, train: list[Example],
                  val: list[Example], tcfg: TrainConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Train `model.aligner` in place (best validation loss kept); the LLM and encoder stay frozen."""
    torch.manual_seed(tcfg.seed)
    opt = torch.optim.AdamW(model.aligner.parameters(), lr=tcfg.lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(train) / tcfg.batch_size)
    total, step = tcfg.epochs * steps_per_epoch, 0
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.lr, total_steps=max(total, 1), pct_start=0.1)
    rng = random.Random(tcfg.seed)
    best: tuple[float, dict[str, torch.Tensor] | None] = (float("inf"), None)
    metrics: dict[str, float] = {}
    for _ in range(tcfg.epochs):
        model.aligner.train()
        order = list(range(len(train)))
        rng.shuffle(order)
        for i in range(0, len(order), tcfg.batch_size):
            loss = loss_of(llm, model, table, pid, [train[j] for j in order[i:i + tcfg.batch_size]])
            metrics["train_loss"] = descend(opt, loss, sched=sched, clip=model.aligner.parameters())
            step += 1
            if progress:
                progress(step, total, metrics)
        model.aligner.eval()
        with torch.no_grad():
            val_loss = (float(sum(loss_of(llm, model, table, pid, val[i:i + 64]) * len(val[i:i + 64])
                                  for i in range(0, len(val), 64))) / len(val)) if val else metrics["train_loss"]
        metrics["val_loss"] = val_loss
        if val_loss <= best[0]:
            best = (val_loss, {k: v.detach().clone() for k, v in model.aligner.state_dict().items()})
        if progress:
            progress(step, total, metrics)
    if best[1] is not None:
        model.aligner.load_state_dict(best[1])
    model.aligner.eval()
    return {"best_val_loss": best[0], "steps": step, "train_examples": len(train), "val_examples": len(val)}


def load_llm(model_dir: Path):
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().requires_grad_(False)
    return llm, llm.get_input_embeddings().weight.detach()


def new_model(model_dir: Path, cfg: AudioConfig, encoder_dir: Path | None, seed: int) -> tuple[AudioModel, dict]:
    """A fresh aligner on a frozen encoder: the one of `encoder_dir` (an audio adapter), or seeded."""
    from floe.adapters.audio.model import load

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if encoder_dir is not None:
            source = load(encoder_dir)
            e = source.cfg
            cfg = AudioConfig(**{**cfg.public(), "num_mel_bins": e.num_mel_bins, "encoder_dim": e.encoder_dim,
                                 "encoder_layers": e.encoder_layers, "encoder_heads": e.encoder_heads})
            model = AudioModel(cfg)
            model.encoder.load_state_dict(source.encoder.state_dict())
            manifest = json.loads((Path(encoder_dir) / "floe_adapter.json").read_text())
            provenance = {"weights": f"from the audio adapter {Path(encoder_dir).name}",
                          "source": manifest.get("encoder")}
        else:
            model = AudioModel(cfg)
            provenance = {"weights": f"seeded random initialisation (seed {seed}), frozen, untrained"}
        init_output_scale(model.aligner, EmbeddingRows(model_dir).rms())
    model.encoder.eval().requires_grad_(False)
    return model, provenance


def train_to_dir(model_dir: Path, data: Path, out: Path, cfg: AudioConfig, tcfg: TrainConfig,
                 encoder_dir: Path | None = None, progress: Progress | None = None) -> tuple[Path, dict]:
    from floe.adapters.audio.model import save
    from floe.server.runtime.model import base_fingerprint

    conversations = read_jsonl(data)
    llm, table = load_llm(model_dir)
    model, provenance = new_model(model_dir, cfg, encoder_dir, tcfg.seed)
    prep = Preparer(model_dir, model)
    examples = [prep(m, f"{Path(data).name}:{n + 1}: ") for n, m in enumerate(conversations)]
    if not any(ex.clips for ex in examples):
        raise ValueError(f"{data}: no input_audio parts")
    tr, va = split(len(examples), tcfg.val_fraction, tcfg.seed)
    report = train_aligner(llm, model, table, prep.pid, [examples[i] for i in tr], [examples[i] for i in va],
                           tcfg, progress)
    if va:
        from floe.adapters.audio.evaluate import greedy, target_tokens

        hits = sum(greedy(llm, model, table, prep.pid, examples[i], prep.eos) == target_tokens(examples[i], prep.eos)
                   for i in va)
        report["val_exact_match"] = hits / len(va)
    save(out, model, base_fingerprint(model_dir),
         extra={"encoder": provenance, "training": {**report, "data": Path(data).name}})
    return Path(out), report
