"""LoRA adapters: plain PEFT directories, applied per request by vLLM's multi-LoRA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from floe.server.kinds import AdapterInfo, EngineLimits, InvalidAdapter, LLMKind, register_kind

_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@register_kind
class LoRAKind(LLMKind):
    name = "lora"

    def manifest(self, directory: Path, limits: EngineLimits) -> AdapterInfo:
        config_path = directory / "adapter_config.json"
        if not config_path.is_file():
            raise InvalidAdapter("a LoRA adapter needs adapter_config.json (PEFT format)", param="source")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidAdapter(f"adapter_config.json is not valid JSON: {exc}", param="source") from exc
        peft_type = str(config.get("peft_type", "")).upper()
        if peft_type != "LORA":
            raise InvalidAdapter(f"peft_type is {peft_type or 'missing'!r}; only LORA is served", param="source")
        rank = config.get("r")
        if not isinstance(rank, int) or rank <= 0:
            raise InvalidAdapter("adapter_config.json: `r` must be a positive integer", param="source")
        if rank > limits.max_lora_rank:
            raise InvalidAdapter(
                f"LoRA rank {rank} exceeds the engine's max_lora_rank {limits.max_lora_rank}",
                param="source",
            )
        if not any((directory / f).is_file() for f in _WEIGHT_FILES):
            raise InvalidAdapter(f"no weights: expected one of {_WEIGHT_FILES}", param="source")
        manifest = self.read_manifest(directory)
        info = self.info(manifest, rank=rank, target_modules=config.get("target_modules"))
        if info.base_model is None and config.get("base_model_name_or_path"):
            info = AdapterInfo(**{**info.__dict__, "base_model": config["base_model_name_or_path"]})
        return info

    async def load(self, directory: Path, backbone: Any, ref: Any) -> str:
        """vLLM keeps the weights (multi-LoRA); `backbone.engine` is server/engine/protocol.py's."""
        await backbone.engine.load_adapter(ref, str(directory))
        return ref.model_id

    async def unload(self, loaded: Any, backbone: Any, ref: Any) -> None:
        await backbone.engine.unload_adapter(ref.model_id)
