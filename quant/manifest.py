"""``floe_quant.json``: what a quantized / pruned output is and how an engine loads it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

MANIFEST_FILE = "floe_quant.json"
_HASHED_SUFFIXES = (".safetensors", ".json", ".bin")


class QuantManifest(BaseModel):
    """Written into every output directory; the server reads ``engine`` and ``load_kwargs``."""

    format_version: int = 1
    kind: Literal["quantize", "prune"]
    method: str
    bits: int | None = None
    group_size: int | None = None
    source_model: str
    source_sha256: str = Field(description="sha256 over the source's weight and config files")
    engine: Literal["vllm", "transformers"] = Field(
        description="engine that runs this output on CPU: vllm (compressed-tensors / dense) "
        "or transformers (bitsandbytes)")
    load_kwargs: dict[str, Any] = Field(
        description="vllm: kwargs for vllm.LLM / AsyncEngineArgs (e.g. quantization); "
        "transformers: kwargs for from_pretrained, BitsAndBytesConfig fields under "
        "'quantization_config'")
    config: dict[str, Any] = Field(default_factory=dict, description="the method config used")
    extra: dict[str, Any] = Field(default_factory=dict, description="method-specific figures")


def hash_model_dir(model_dir: Path) -> str:
    """sha256 over (relative name, bytes) of the weight/config files, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).iterdir()
                       if p.is_file() and p.suffix in _HASHED_SUFFIXES and p.name != MANIFEST_FILE):
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def write_manifest(out_dir: Path, manifest: QuantManifest) -> None:
    (Path(out_dir) / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))


def read_manifest(out_dir: Path) -> QuantManifest:
    return QuantManifest.model_validate(json.loads((Path(out_dir) / MANIFEST_FILE).read_text()))
