"""int8 / nf4 / fp4 through bitsandbytes + transformers (runs on the transformers engine).

NOTE: a 4-bit bitsandbytes model repacks its weights after forward passes, and a save after
that is silently corrupt (PLATFORM_NOTES). So the checkpoint is written straight after
loading, before any inference touches it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from floe.quant.model_io import copy_tokenizer
from floe.quant.registry import MethodConfig, MethodResult, register_method


class BnbConfig(MethodConfig):
    """bitsandbytes quantization; ``method`` picks int8 (LLM.int8), nf4 or fp4."""

    method: Literal["int8", "nf4", "fp4"] = "nf4"
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the 4-bit matmuls and of the unquantized layers")
    double_quant: bool = Field(False, description="4-bit: also quantize the absmax constants")
    int8_threshold: float = Field(6.0, description="int8: outlier threshold of LLM.int8")


def bnb_fields(config: BnbConfig) -> dict:
    """BitsAndBytesConfig keyword arguments, JSON-serialisable (they go into the manifest)."""
    if config.method == "int8":
        return {"load_in_8bit": True, "llm_int8_threshold": config.int8_threshold}
    return {
        "load_in_4bit": True, "bnb_4bit_quant_type": config.method,
        "bnb_4bit_compute_dtype": config.compute_dtype,
        "bnb_4bit_use_double_quant": config.double_quant,
    }


def _run(model_dir: Path, config: BnbConfig, calibration, work_dir: Path) -> MethodResult:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    fields = bnb_fields(config)
    dtype = getattr(torch, config.compute_dtype)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=BitsAndBytesConfig(**fields), dtype=dtype, device_map="cpu")
    model.save_pretrained(work_dir)  # before any forward pass, see module NOTE
    copy_tokenizer(model_dir, work_dir)
    return MethodResult(
        engine="transformers",
        load_kwargs={"quantization_config": fields, "dtype": config.compute_dtype, "device_map": "cpu"},
        bits=8 if config.method == "int8" else 4,
        group_size=None if config.method == "int8" else 64,
        extra={"format": "bitsandbytes"},
    )


for _name in ("int8", "nf4", "fp4"):
    register_method(_name, kind="quantize", config=BnbConfig)(_run)
