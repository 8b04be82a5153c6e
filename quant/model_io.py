"""Loading, checking and saving Hugging Face causal-LM directories for the methods."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from floe.quant.errors import ModelNotFoundError, UnsupportedArchitectureError

# Decoder-only architectures whose linear layers are plain nn.Linear in transformers and vLLM.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                   "generation_config.json")


def read_config(model_dir: Path) -> dict:
    model_dir = Path(model_dir)
    cfg = model_dir / "config.json"
    if not model_dir.is_dir() or not cfg.is_file():
        raise ModelNotFoundError(f"no Hugging Face model directory (config.json) at {model_dir}")
    if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin")):
        raise ModelNotFoundError(f"{model_dir} has a config.json but no weight files")
    return json.loads(cfg.read_text())


def check_architecture(model_dir: Path, allowed=SUPPORTED_MODEL_TYPES) -> dict:
    cfg = read_config(model_dir)
    mt = cfg.get("model_type")
    if mt not in allowed:
        raise UnsupportedArchitectureError(
            f"model_type {mt!r} is not supported; supported: {', '.join(allowed)}")
    if cfg.get("quantization_config"):
        raise UnsupportedArchitectureError(f"{model_dir} is already quantized; start from a dense model")
    return cfg


def load_dense(model_dir: Path):
    """(model in fp32 eval mode, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (Path(src) / name).exists():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def save_dense(model, src: Path, dst: Path) -> None:
    model.save_pretrained(dst)
    copy_tokenizer(src, dst)


def decoder_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """Every nn.Linear inside the decoder layers (lm_head and embeddings stay dense)."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and ".layers." in f".{name}" and "lm_head" not in name:
            yield name, mod


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers
