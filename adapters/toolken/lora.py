"""Tool rows -> a PEFT LoRA on `lm_head` that puts them at the base's spare vocabulary ids.

With alpha = r vLLM (and PEFT) add exactly B @ A to the head's weight W [V, d]; rows s_k of the
result must be e_k and every other row W's own (module doc of `floe.adapters.toolken`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from floe.adapters.toolken import KIND, MAX_BIAS, TOOLS, WEIGHTS, ToolkenKind, lora_rank, parse_tools
from floe.server.kinds import InvalidAdapter

LORA_PREFIX = "base_model.model.lm_head"


@dataclass(frozen=True)
class Base:
    """What placing tool rows needs to know about a base checkpoint."""

    width: int
    vocab_size: int  # rows of the head (config.vocab_size)
    text_vocab: int  # len(tokenizer): ids at and past it are spare
    head_key: str  # the tensor holding the head's weight (embed_tokens when tied)

    @property
    def spare_ids(self) -> list[int]:
        return list(range(self.text_vocab, self.vocab_size))


@dataclass(frozen=True)
class Placed:
    tools: list[dict[str, Any]]
    token_ids: list[int]
    spare_ids: list[int]
    bias: list[float]
    scratch: Path


def read_base(model_dir: Path) -> Base:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    tied = bool(getattr(text, "tie_word_embeddings", False))
    return Base(width=int(text.hidden_size), vocab_size=int(text.vocab_size),
                text_vocab=len(AutoTokenizer.from_pretrained(model_dir)),
                head_key="model.embed_tokens.weight" if tied else "lm_head.weight")


def head_rows(model_dir: Path, base: Base, ids: list[int]) -> torch.Tensor:
    """Rows `ids` of the base's output head [len(ids), d] (fp32), read without loading the model."""
    from safetensors import safe_open

    index = Path(model_dir) / "model.safetensors.index.json"
    files = ([Path(model_dir) / json.loads(index.read_text())["weight_map"][base.head_key]] if index.is_file()
             else sorted(Path(model_dir).glob("*.safetensors")))
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            if base.head_key in fh.keys():
                head = fh.get_slice(base.head_key)
                return torch.cat([head[i:i + 1] for i in ids]).float() if ids else torch.zeros(0, base.width)
    raise InvalidAdapter(f"the base checkpoint has no {base.head_key} to place tool rows in", param="source")


def lora_factors(rows: torch.Tensor, head: torch.Tensor, ids: list[int], vocab_size: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [r, d], B [V, r]) with B @ A = (rows - head) at `ids`, zero elsewhere; r = min(K, d)."""
    n, width = rows.shape
    delta = rows.float() - head.float()  # [K, d]
    index = torch.tensor(ids)
    if n <= width:
        a = delta
        b = torch.zeros(vocab_size, n)
        b[index, torch.arange(n)] = 1.0
    else:
        a = torch.eye(width)
        b = torch.zeros(vocab_size, width)
        b[index] = delta
    return a.contiguous(), b.contiguous()


def write_lora(out: Path, a: torch.Tensor, b: torch.Tensor, model_dir: Path) -> Path:
    """A PEFT LoRA directory (lm_head only, alpha = r) that vLLM and PEFT load."""
    from safetensors.torch import save_file

    rank = a.shape[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
        "target_modules": ["lm_head"], "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "base_model_name_or_path": str(model_dir)}, indent=1))
    save_file({f"{LORA_PREFIX}.lora_A.weight": a, f"{LORA_PREFIX}.lora_B.weight": b},
              str(out / "adapter_model.safetensors"))
    return out


def read_adapter(directory: Path) -> tuple[torch.Tensor, torch.Tensor | None, list[dict[str, Any]], float]:
    """(E [K, d], bias [K] or None, tools, config.logits_bias) of an adapter directory."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(directory) / WEIGHTS))
    tools = parse_tools(ToolkenKind.read_json(directory, TOOLS))
    config = ToolkenKind.read_manifest(directory).get("config") or {}
    return tensors["embedding"].float(), tensors.get("bias"), tools, float(config.get("logits_bias", 0.0))


def check_against(base: Base, embedding: torch.Tensor) -> None:
    n, width = embedding.shape
    if width != base.width:
        raise InvalidAdapter(f"tool rows have width {width}, the base's hidden size is {base.width}", param="source")
    spare = base.vocab_size - base.text_vocab
    if n > spare:
        raise InvalidAdapter(f"{n} tools need {n} spare vocabulary rows; this base has {spare} "
                             f"(vocab_size {base.vocab_size}, tokenizer {base.text_vocab})", param="source")
    if not torch.isfinite(embedding).all():
        raise InvalidAdapter("tool rows contain NaN or inf", param="source")


def prepare(directory: Path, model_dir: Path) -> Placed:
    """Validate the adapter against the base and write its LoRA into a scratch directory."""
    from floe.server.runtime.model import base_fingerprint

    ToolkenKind.check_base(ToolkenKind.read_manifest(directory), base_fingerprint(model_dir))
    embedding, bias, tools, scalar = read_adapter(directory)
    base = read_base(model_dir)
    check_against(base, embedding)
    ids = base.spare_ids[: len(tools)]
    per_tool = (bias.float() if bias is not None else torch.zeros(len(tools))) + scalar
    if not torch.isfinite(per_tool).all() or per_tool.abs().max() > MAX_BIAS:
        raise InvalidAdapter("tool biases (bias + config.logits_bias) must be finite, within [-100, 100]",
                             param="source")
    a, b = lora_factors(embedding, head_rows(model_dir, base, ids), ids, base.vocab_size)
    assert a.shape[0] == lora_rank(*embedding.shape)
    scratch = Path(tempfile.mkdtemp(prefix=f"floe-{KIND}-"))
    write_lora(scratch, a, b, model_dir)
    return Placed(tools=tools, token_ids=ids, spare_ids=base.spare_ids, bias=per_tool.tolist(), scratch=scratch)
