"""A small Llama-architecture reference LM trained here, offline and reproducibly.

Text: :mod:`floe.quant.refdata` (CPython's documentation topics and its standard library's
source), four disjoint splits by document; the LM and its byte-level BPE tokenizer see only
``train``. The output is cached under ``$FLOE_CACHE_DIR/quant-ref/<key>`` (default
``~/.cache/floe``), where the key hashes the builder itself (this file and ``refdata.py``), the
spec, the corpus text and the torch / transformers versions: editing the builder rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from floe.quant.refdata import Splits, corpus_sha256, splits

HELDOUT_FILE = "heldout.txt"
INFO_FILE = "floe_refmodel.json"


class RefModelSpec(BaseModel):
    """Size and training schedule of the reference model (defaults: ~40 min on an idle core)."""

    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 3
    intermediate_size: int = 512
    vocab_size: int = 2048
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 3000
    lr: float = 3e-3
    weight_decay: float = 0.1
    seed: int = 0
    max_chars: int | None = Field(None, description="cap on the corpus (all splits); None: all of it")


TEST_SPEC = RefModelSpec(
    hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256, vocab_size=512,
    seq_len=64, batch_size=8, steps=300, lr=5e-3, weight_decay=0.01, max_chars=400_000,
)


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def encode_docs(tok, texts: list[str]) -> torch.Tensor:
    """One token stream ``[n]``: each document's ids followed by EOS."""
    ids: list[int] = []
    for enc in tok(texts)["input_ids"]:
        ids += enc + [tok.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def builder_key(spec: RefModelSpec, data: Splits) -> str:
    import transformers

    here = Path(__file__).parent
    src = [hashlib.sha256((here / f).read_bytes()).hexdigest() for f in ("refmodel.py", "refdata.py")]
    blob = json.dumps([spec.model_dump(), src, corpus_sha256(data), transformers.__version__,
                       torch.__version__], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("FLOE_CACHE_DIR", Path.home() / ".cache" / "floe")) / "quant-ref"


def build_reference_model(spec: RefModelSpec | None = None, cache_dir: Path | None = None,
                          log=print) -> Path:
    """Train (once) and return the directory of the reference model; held-out text beside it."""
    spec = spec or RefModelSpec()
    data = splits(spec.max_chars)
    out = Path(cache_dir or cache_root()) / builder_key(spec, data)
    if (out / INFO_FILE).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        _train(spec, data, tmp, log)
        try:
            tmp.rename(out)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_info(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / INFO_FILE).read_text())


@torch.no_grad()
def _heldout_loss(model, ids: torch.Tensor, seq_len: int, windows: int = 64) -> float:
    n = min(windows, len(ids) // seq_len)
    batch = ids[: n * seq_len].view(n, seq_len)
    return sum(model(input_ids=batch[i:i + 16], labels=batch[i:i + 16]).loss.item()
               for i in range(0, n, 16)) / math.ceil(n / 16)


def _train(spec: RefModelSpec, data: Splits, out: Path, log) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    t0, c0 = time.time(), time.process_time()
    torch.manual_seed(spec.seed)
    tok = train_tokenizer(data.train, spec.vocab_size)
    ids = encode_docs(tok, data.train)
    held_ids = encode_docs(tok, data.heldout)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads, max_position_embeddings=max(512, spec.seq_len),
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False, torch_dtype="float32",
    )
    model = LlamaForCausalLM(cfg)
    # no weight decay on norms (1-d); decay on matrices and embeddings
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(spec.seed)
    warmup = max(1, spec.steps // 20)
    model.train()
    for step in range(spec.steps):
        # linear warmup, cosine decay to 10% of the peak
        cos = 0.5 * (1 + math.cos(math.pi * step / spec.steps))
        lr = spec.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * cos)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(ids) - spec.seq_len - 1, (spec.batch_size,), generator=gen)
        batch = torch.stack([ids[s:s + spec.seq_len] for s in starts.tolist()])  # [B, T]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == spec.steps - 1:
            log(f"[refmodel] step {step}/{spec.steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    held_loss = _heldout_loss(model, held_ids, spec.seq_len)
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / HELDOUT_FILE).write_text("\n\n".join(data.heldout), encoding="utf-8")
    info = {
        "spec": spec.model_dump(), "corpus_sha256": corpus_sha256(data), "chars": data.sizes(),
        "train_tokens": len(ids), "tokens_seen": spec.steps * spec.batch_size * spec.seq_len,
        "decoder_params": sum(p.numel() for n, p in model.named_parameters() if ".layers." in f".{n}"),
        "params": sum(p.numel() for p in model.parameters()),
        "heldout_loss": held_loss, "build_seconds": round(time.time() - t0, 1),
        "build_cpu_seconds": round(time.process_time() - c0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=2))
    log(f"[refmodel] done: held-out loss {held_loss:.3f} (ppl {math.exp(held_loss):.2f}), "
        f"{info['build_seconds']:.0f}s")
