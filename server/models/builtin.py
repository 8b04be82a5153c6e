"""Offline, deterministic builders for the built-in model set and the test fixtures.

No machine here can download weights, so `floe serve` with no model serves a tiny
Llama-architecture chat model built on first use: a byte-level BPE tokenizer trained on text
that ships with Python, a ChatML chat template, and seeded random weights. The same builders
make the test fixtures (base model and LoRA adapters), so tests and the default server agree.

Every build writes into a temporary sibling directory and renames it into place, so a crash
never leaves a half-built model that a later run would trust.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# ChatML, plus Hermes-style tool calling (the format of Qwen2.5 and NousResearch Hermes, which
# vLLM's `hermes` tool parser and structural tag read): `tools` go into the system turn inside
# <tools></tools>, assistant calls are `<tool_call>\n{"name", "arguments"}\n</tool_call>` and
# tool results come back in a user turn as <tool_response>. Without tools the rendering is plain
# ChatML. An assistant turn with calls keeps the `<|im_start|>assistant\n` prefix of the
# generation prompt, so history looks exactly like what the model was constrained to write.
CHATML_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- elif content is not none -%}{%- for part in content -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\n' -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- text(messages[0]['content']) + '\n\n' -}}"
    "{%- endif -%}"
    "{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n'"
    " 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\n</tools>\n\nFor each function call, return a json object with function name and '"
    " 'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n'"
    " '{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' and tools and loop.first -%}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}"
    "{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\n<tool_response>\n' + text(message['content']) + '\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}"
    "{{- '<|im_end|>\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' + text(message['content']) -}}"
    "{%- for call in message.tool_calls or [] -%}"
    "{%- set call = call['function'] if call['function'] is defined else call -%}"
    "{%- if not loop.first or message['content'] -%}{{- '\n' -}}{%- endif -%}"
    "{{- '<tool_call>\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' -}}"
    "{%- if call['arguments'] is string -%}{{- call['arguments'] -}}"
    "{%- else -%}{{- call['arguments'] | tojson -}}{%- endif -%}"
    "{{- '}\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Modules whose docstrings form the tokenizer's training text: present on every CPython 3.11.
_CORPUS_MODULES = (
    "argparse", "asyncio", "collections", "csv", "dataclasses", "datetime", "decimal",
    "email", "functools", "heapq", "http.client", "inspect", "json", "logging", "pathlib",
    "random", "re", "shutil", "statistics", "string", "subprocess", "textwrap", "typing",
    "unittest", "urllib.parse", "zipfile",
)


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a built-in model. Sizes are small enough to build in seconds on 2 cores."""

    name: str = "floe-tiny-chat"
    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    dtype: str = "float32"
    seed: int = 0
    # Embedding / output rows past the tokenizer's vocabulary: ids no text encodes to, free for
    # adapters that add output rows (tool tokens place theirs here through an lm_head LoRA).
    spare_tokens: int = 64


BUILTIN_MODELS: dict[str, ModelSpec] = {
    "floe-tiny-chat": ModelSpec(),
    # ~0.1B parameters: fixed costs no longer dominate, so overhead ratios mean something.
    "floe-bench-chat": ModelSpec(
        name="floe-bench-chat", vocab_size=8192, hidden_size=768, intermediate_size=2048,
        num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4, dtype="bfloat16",
    ),
}
DEFAULT_MODEL = "floe-tiny-chat"


def cache_root() -> Path:
    """Where built models live: $FLOE_CACHE_DIR, else ~/.cache/floe."""
    env = os.environ.get("FLOE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "floe"


def _builder_fingerprint(spec: ModelSpec) -> str:
    # NOTE: the code of this module is part of the key, so a changed builder never reuses
    # an artifact built by an older one.
    source = inspect.getsource(inspect.getmodule(_builder_fingerprint))
    blob = json.dumps(asdict(spec), sort_keys=True) + source
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _atomic_build(target: Path, build) -> Path:
    if (target / "floe_built.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        build(tmp)
        (tmp / "floe_built.json").write_text(json.dumps({"name": target.name}))
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished the same build first; theirs is identical.
            if not (target / "floe_built.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _corpus() -> list[str]:
    import importlib

    texts = []
    for name in _CORPUS_MODULES:
        module = importlib.import_module(name)
        for obj in [module, *vars(module).values()]:
            doc = getattr(obj, "__doc__", None)
            owner = getattr(obj, "__module__", None) or name
            if isinstance(doc, str) and owner.startswith(name.split(".")[0]):
                texts.append(doc)
    return texts


def build_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """Train a byte-level BPE on stdlib docstrings and save it as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out_dir)


def build_model(spec: ModelSpec, out_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    build_tokenizer(out_dir, spec.vocab_size - spec.spare_tokens)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    # NOTE: default init (std 0.02) gives near-uniform logits; a wider output layer makes
    # greedy decoding of the random model decisive, so engine comparisons are meaningful. The
    # input embedding keeps the default scale: soft tokens that adapters learn live at that
    # scale, and a std-1 embedding drowned them (demo adapters then scored at chance).
    # Spare rows are zero: the base never emits them and no text reaches them.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.5)
        used = len(tokenizer)
        model.lm_head.weight[used:] = 0.0
        model.model.embed_tokens.weight[used:] = 0.0
    model = model.to(getattr(torch, spec.dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)


def prepare(name: str = DEFAULT_MODEL, root: Path | None = None) -> Path:
    """Build (once) and return the directory of a built-in model."""
    if name not in BUILTIN_MODELS:
        raise KeyError(f"unknown built-in model {name!r}; built-in: {sorted(BUILTIN_MODELS)}")
    spec = BUILTIN_MODELS[name]
    root = root or cache_root()
    target = root / "models" / f"{spec.name}-{_builder_fingerprint(spec)}"
    return _atomic_build(target, lambda tmp: build_model(spec, tmp))


def build_lora(base_dir: Path, out_dir: Path, *, seed: int, rank: int = 8,
               target_modules: tuple[str, ...] = ("q_proj", "v_proj"), scale: float = 0.5) -> Path:
    """Write a PEFT LoRA adapter with seeded non-zero weights (a trained-looking adapter).

    PEFT initialises B to zero, which would make the adapter a no-op; both factors are
    drawn here so that an adapter visibly changes the base model's outputs.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def build(tmp: Path) -> None:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules),
                            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, param in peft_model.named_parameters():
                if "lora_" in pname:
                    param.copy_(torch.randn(param.shape, generator=gen) * scale)
        peft_model.save_pretrained(tmp)

    out_dir = Path(out_dir)
    return _atomic_build(out_dir, build)
