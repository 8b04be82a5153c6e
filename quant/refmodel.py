"""A small Llama-architecture reference LM trained here, offline and reproducibly.

Text: the Python documentation topics shipped with every CPython (``pydoc_data.topics``) plus
the docstrings of the standard library's pure-Python modules. Whole documents are split into
train / held-out by a hash of their name, so the held-out text is never seen in training.
The tokenizer is a byte-level BPE trained with ``tokenizers``. Output is cached under
``$FLOE_CACHE_DIR/quant-ref/<spec hash>`` (default ``~/.cache/floe``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import shutil
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
from pydantic import BaseModel, Field

HELDOUT_FILE = "heldout.txt"


class RefModelSpec(BaseModel):
    """Size and training schedule of the reference model (defaults: ~6 min on one core)."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 768
    vocab_size: int = 2048
    seq_len: int = 128
    batch_size: int = 8
    steps: int = 900
    lr: float = 3e-3
    seed: int = 0
    max_chars: int = Field(1_500_000, description="cap on corpus size, train + held-out")


TEST_SPEC = RefModelSpec(
    hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256, vocab_size=512,
    seq_len=64, batch_size=8, steps=300, lr=5e-3, max_chars=300_000,
)


def _documents(max_chars: int) -> list[tuple[str, str]]:
    """(name, text) pairs, in a fixed order."""
    import pydoc_data.topics as topics

    docs = [(f"topic:{k}", topics.topics[k]) for k in sorted(topics.topics)]
    libdir = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(libdir.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        parts = [ast.get_docstring(n) for n in ast.walk(tree)
                 if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        text = "\n\n".join(p for p in parts if p and len(p) > 40)
        if text:
            docs.append((f"module:{path.stem}", text))
    out, total = [], 0
    for name, text in docs:
        if total >= max_chars:
            break
        out.append((name, text))
        total += len(text)
    return out


def corpus(max_chars: int = 1_500_000) -> tuple[str, str]:
    """(train_text, heldout_text); about 10% of documents held out by name hash."""
    train, held = [], []
    for name, text in _documents(max_chars):
        bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10
        (held if bucket == 0 else train).append(text)
    return "\n\n".join(train), "\n\n".join(held)


def train_tokenizer(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([text[i:i + 10_000] for i in range(0, len(text), 10_000)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _spec_key(spec: RefModelSpec) -> str:
    import transformers

    blob = json.dumps([spec.model_dump(), transformers.__version__, torch.__version__], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("FLOE_CACHE_DIR", Path.home() / ".cache" / "floe")) / "quant-ref"


def build_reference_model(spec: RefModelSpec | None = None, cache_dir: Path | None = None,
                          log=print) -> Path:
    """Train (once) and return the directory of the reference model; held-out text beside it."""
    spec = spec or RefModelSpec()
    out = Path(cache_dir or cache_root()) / _spec_key(spec)
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        _train(spec, tmp, log)
        try:
            tmp.rename(out)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _train(spec: RefModelSpec, out: Path, log) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(spec.seed)
    train_text, held_text = corpus(spec.max_chars)
    tok = train_tokenizer(train_text, spec.vocab_size)
    ids = torch.tensor(tok(train_text)["input_ids"], dtype=torch.long)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads, max_position_embeddings=max(512, spec.seq_len),
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False, torch_dtype="float32",
    )
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(spec.seed)
    warmup = max(1, spec.steps // 20)
    t0 = time.time()
    model.train()
    for step in range(spec.steps):
        lr = spec.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / spec.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(ids) - spec.seq_len - 1, (spec.batch_size,), generator=gen)
        batch = torch.stack([ids[s:s + spec.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == spec.steps - 1:
            log(f"[refmodel] step {step}/{spec.steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / HELDOUT_FILE).write_text(held_text, encoding="utf-8")
    (out / "floe_refmodel.json").write_text(json.dumps(spec.model_dump(), indent=2))
