"""Fit tool rows E on OpenAI chat fine-tuning JSONL with the LLM frozen (ToolkenGPT's objective).

Every assistant turn is a target, its prompt rendered as vLLM renders the served request (the
chat template, no tools: a toolken request keeps them out of the context). A turn with
`tool_calls` teaches its text tokens and then the first call's tool token; a turn without, its
text tokens and the end of turn. The loss is the cross-entropy of `concat(lm_head(h), h @ E^T)`
over those targets (h: the last hidden state after the final norm), as in ToolkenGPT's
`get_loss`. The LLM is frozen, so h and the head's log-normaliser are computed once per target
(`Features`); training then touches only E, and an epoch over thousands of turns takes seconds.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from floe.adapters.toolken import KIND, MANIFEST, TOOLS, WEIGHTS, parse_tools
from floe.server.kinds import InvalidAdapter
from floe.server.training import descend

Progress = Callable[[int, int, dict[str, float]], None]
FIELDS = ("hidden", "lse", "head_max", "target_logit", "tool", "turn")


@dataclass(frozen=True)
class Turn:
    """One assistant turn to learn: prompt ids, its text ids, and the tool it calls (or None)."""

    prompt: list[int]
    text: list[int]
    tool: int | None
    line: int


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 0.0
    val_fraction: float = 0.15
    seed: int = 0


# -- data ------------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON: {exc}") from exc
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
            raise ValueError(f"{path}:{n}: each line must be an object with `messages` (OpenAI chat fine-tuning)")
        rows.append({**row, "_line": n})
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


def collect_tools(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every tool the lines define, first definition wins, in order of appearance."""
    tools: dict[str, dict[str, Any]] = {}
    for row in rows:
        for tool in row.get("tools") or []:
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise ValueError(f"line {row['_line']}: tools must be OpenAI function tools")
            tools.setdefault(function["name"], {"type": "function", "function": function})
    if not tools:
        raise ValueError("no line defines `tools`: a toolken adapter needs at least one tool")
    try:
        return parse_tools({"tools": list(tools.values())})
    except InvalidAdapter as exc:
        raise ValueError(exc.message) from exc


def turns(rows: list[dict[str, Any]], tools: list[dict[str, Any]], tokenizer: Any) -> list[Turn]:
    index = {t["function"]["name"]: k for k, t in enumerate(tools)}
    out = []
    for row in rows:
        messages, line = row["messages"], row["_line"]
        listed = {t["function"]["name"] for t in row.get("tools") or []}
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") != "assistant" or message.get("weight") == 0:
                continue
            calls = message.get("tool_calls") or []
            tool = None
            if calls:
                name = (calls[0].get("function") or {}).get("name") if isinstance(calls[0], dict) else None
                if name not in listed:
                    raise ValueError(f"line {line}: the assistant calls {name!r}, which the line's tools do not define")
                tool = index[name]
            content = message.get("content") or ""
            if not isinstance(content, str):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not calls and not content:
                continue
            prompt = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
            text = tokenizer(content, add_special_tokens=False)["input_ids"] if content else []
            out.append(Turn(list(prompt), list(text), tool, line))
    if not any(t.tool is not None for t in out):
        raise ValueError("no assistant turn calls a tool: nothing to learn tool tokens from")
    return out


# -- features of the frozen LLM -------------------------------------------------------------

@dataclass
class Features:
    """Per target position: h [N, d], the head's logsumexp and max over the text vocabulary [N],
    the target's head logit [N] (or the tool row to predict, `tool` >= 0), and its turn [N]."""

    hidden: torch.Tensor
    lse: torch.Tensor
    head_max: torch.Tensor
    target_logit: torch.Tensor
    tool: torch.Tensor
    turn: torch.Tensor


@torch.no_grad()
def features(lm: Any, items: list[Turn], tool_ids: list[int], batch: int = 16) -> Features:
    """One teacher-forced forward per turn (right-padded batches)."""
    keep = torch.ones(lm.config.vocab_size, dtype=torch.bool)
    keep[tool_ids] = False  # the spare rows the tools replace are not head logits any more
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in FIELDS}
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        seqs = [t.prompt + t.text for t in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
        hidden = lm.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, d], after the norm
        for i, turn in enumerate(chunk):
            first = len(turn.prompt) - 1
            positions = torch.arange(first, first + len(turn.text) + 1)  # each predicts the next target
            h = hidden[i, positions]
            logits = lm.lm_head(h)  # [n, V]
            targets = [*turn.text, lm.config.eos_token_id if turn.tool is None else -1]
            tgt = torch.tensor(targets)
            parts["hidden"].append(h.float())
            parts["lse"].append(torch.logsumexp(logits[:, keep], dim=-1))
            parts["head_max"].append(logits[:, keep].max(dim=-1).values)
            parts["target_logit"].append(torch.where(tgt >= 0, logits.gather(1, tgt.clamp(min=0)[:, None])[:, 0],
                                                     torch.zeros(())))
            tool = torch.full((len(targets),), -1, dtype=torch.long)
            if turn.tool is not None:
                tool[-1] = turn.tool
            parts["tool"].append(tool)
            parts["turn"].append(torch.full((len(targets),), start + i, dtype=torch.long))
    return Features(**{k: torch.cat(v) for k, v in parts.items()})


def loss_and_hits(embedding: torch.Tensor, f: Features) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of concat(head, h E^T), and per position whether its argmax is right."""
    tool_logits = f.hidden @ embedding.T  # [N, K]
    lse = torch.logaddexp(f.lse, torch.logsumexp(tool_logits, dim=-1))
    is_tool = f.tool >= 0
    target = torch.where(is_tool, tool_logits.gather(1, f.tool.clamp(min=0)[:, None])[:, 0], f.target_logit)
    best_tool = tool_logits.max(dim=-1)
    # right: a tool target's own row is the argmax of the whole concat; at a text target no tool
    # row is (so greedy decoding keeps writing text there)
    hits = torch.where(is_tool, (best_tool.indices == f.tool) & (best_tool.values > f.head_max),
                       best_tool.values < f.head_max)
    return (lse - target).mean(), hits


def evaluate(embedding: torch.Tensor, f: Features) -> dict[str, float]:
    with torch.no_grad():
        loss, hits = loss_and_hits(embedding, f)
        tool_logits = f.hidden @ embedding.T
    calls = f.tool >= 0
    text = ~calls
    out = {"loss": float(loss)}
    if calls.any():
        out["tool_accuracy"] = float((tool_logits[calls].argmax(-1) == f.tool[calls]).float().mean())
        out["fires"] = float(hits[calls].float().mean())
    if text.any():
        out["text_kept"] = float(hits[text].float().mean())
    return out


def fit(f_train: Features, f_val: Features | None, n_tools: int, cfg: TrainConfig,
        progress: Progress | None = None) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """E [K, d] by Adam on the frozen features; the epoch with the best validation loss wins."""
    gen = torch.Generator().manual_seed(cfg.seed)
    width = f_train.hidden.shape[1]
    embedding = torch.nn.Parameter(torch.randn(n_tools, width, generator=gen) / math.sqrt(width))
    opt = torch.optim.AdamW([embedding], lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = f_train.hidden.shape[0]
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total, step, history = cfg.epochs * steps_per_epoch, 0, []
    best, best_loss = embedding.detach().clone(), float("inf")
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            part = Features(*(getattr(f_train, k)[idx] for k in FIELDS))
            loss, _ = loss_and_hits(embedding, part)
            last = descend(opt, loss)
            step += 1
            if progress:
                progress(step, total, {"loss": last})
        report = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in evaluate(embedding.detach(), f_train).items()}}
        if f_val is not None:
            report.update({f"val_{k}": v for k, v in evaluate(embedding.detach(), f_val).items()})
        history.append(report)
        if progress:
            progress(step, total, {k: v for k, v in report.items() if k.startswith("val_") or k == "train_loss"})
        score = report.get("val_loss", report["train_loss"])
        if score < best_loss:
            best, best_loss = embedding.detach().clone(), score
    return best, history


def split(items: list[Turn], fraction: float, seed: int) -> tuple[list[Turn], list[Turn]]:
    """By line (all turns of a conversation on one side); at least one line stays for training."""
    lines = sorted({t.line for t in items})
    random.Random(seed).shuffle(lines)
    held = set(lines[: int(len(lines) * fraction)]) if len(lines) > 1 else set()
    return [t for t in items if t.line not in held], [t for t in items if t.line in held]


# -- the adapter directory -------------------------------------------------------------------

def save(out: Path, embedding: torch.Tensor, tools: list[dict[str, Any]], base_fingerprint: str, *,
         version: str = "1", logits_bias: float = 0.0, extra: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"embedding": embedding.detach().float().contiguous()}, str(out / WEIGHTS))
    (out / TOOLS).write_text(json.dumps({"tools": tools}, indent=1))
    (out / MANIFEST).write_text(json.dumps({"kind": KIND, "base_model": base_fingerprint, "version": version,
                                            "config": {"logits_bias": logits_bias}, **(extra or {})}, indent=1))
    return out


def load_lm(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().requires_grad_(False)
    return lm, AutoTokenizer.from_pretrained(model_dir)


def tool_token_ids(lm: Any, tokenizer: Any, n_tools: int) -> list[int]:
    spare = list(range(len(tokenizer), lm.config.vocab_size))
    if n_tools > len(spare):
        raise ValueError(f"{n_tools} tools need {n_tools} spare vocabulary rows; the base has {len(spare)}")
    return spare[:n_tools]


def train_to_dir(model_dir: Path, data: Path, out: Path, cfg: TrainConfig,
                 progress: Progress | None = None) -> tuple[Path, dict[str, Any]]:
    """Read the JSONL, fit E with the LLM frozen, write the adapter; (path, report)."""
    from floe.server.runtime.model import base_fingerprint

    started = time.process_time()
    rows = read_jsonl(data)
    lm, tokenizer = load_lm(model_dir)
    tools = collect_tools(rows)
    ids = tool_token_ids(lm, tokenizer, len(tools))
    items = turns(rows, tools, tokenizer)
    train_items, val_items = split(items, cfg.val_fraction, cfg.seed)
    f_train = features(lm, train_items, ids)
    f_val = features(lm, val_items, ids) if val_items else None
    embedding, history = fit(f_train, f_val, len(tools), cfg, progress)
    report = {"tools": len(tools), "train_turns": len(train_items), "val_turns": len(val_items),
              "epochs": cfg.epochs, "lr": cfg.lr, "history": history[-1:] and history[-1],
              "best": min(history, key=lambda r: r.get("val_loss", r["train_loss"])),
              "chance": 1 / len(tools), "cpu_seconds": round(time.process_time() - started, 1)}
    save(out, embedding, tools, base_fingerprint(model_dir),
         extra={"trained": ["embedding"], "training": {**report, "data": Path(data).name}})
    return Path(out), report


# -- the reference of the fidelity test -------------------------------------------------------

@torch.no_grad()
def reference_logprobs(model_dir: Path, adapter_dir: Path, messages: list[dict[str, Any]]) -> torch.Tensor:
    """log_softmax(concat(lm_head(h), h @ E^T)) at the first answer position [V], from the method's
    definition: plain transformers fp32, the tool rows at the spare ids they are served at."""
    from safetensors.torch import load_file

    lm, tokenizer = load_lm(model_dir)
    embedding = load_file(str(Path(adapter_dir) / WEIGHTS))["embedding"].float()
    ids = tool_token_ids(lm, tokenizer, embedding.shape[0])
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    h = lm.model(input_ids=torch.tensor([prompt])).last_hidden_state[0, -1]  # [d]
    logits = lm.lm_head(h)
    logits[ids] = embedding @ h
    return torch.log_softmax(logits, dim=-1)
