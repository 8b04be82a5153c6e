"""Write and read compressed-tensors checkpoints (the format vLLM CPU runs) by hand.

Uses the installed ``compressed-tensors`` library (vLLM's pin) for the config schema and the
int32 packing, so vLLM's loader sees exactly what llm-compressor would write:
- ``W4A16`` / ``W8A16``: ``pack-quantized``; per layer ``weight_packed`` int32 ``[out, in*bits/32]``,
  ``weight_scale`` ``[out, in/group]``, ``weight_shape`` ``[2]``; symmetric, weight-only.
- ``W8A8``: ``int-quantized``; ``weight`` int8 ``[out, in]``, ``weight_scale`` ``[out, 1]``,
  activations quantized to int8 per token at run time (dynamic).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from floe.quant.errors import UnsupportedBitsError
from floe.quant.model_io import copy_tokenizer

Scheme = Literal["W4A16", "W8A16", "W8A8"]


@dataclass
class QLinear:
    """Integer weight of one linear layer: ``w ~= q * scale`` (scale repeated per group)."""

    q: torch.Tensor  # int8 [out, in], values in [-2^(b-1), 2^(b-1)-1]
    scale: torch.Tensor  # fp32 [out, in // group_size]


def qrange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def group_scale(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Symmetric absmax scale ``[out, in // group]``; group_size -1 means per channel."""
    out_f, in_f = w.shape
    g = in_f if group_size in (-1, 0) else group_size
    if in_f % g:
        raise UnsupportedBitsError(f"in_features {in_f} is not a multiple of group_size {g}")
    amax = w.reshape(out_f, in_f // g, g).abs().amax(-1).clamp_min(1e-8)
    return amax / qrange(bits)[1]


def rtn(w: torch.Tensor, bits: int, group_size: int) -> QLinear:
    """Round-to-nearest, symmetric, per group."""
    scale = group_scale(w, bits, group_size)
    lo, hi = qrange(bits)
    s_full = scale.repeat_interleave(w.shape[1] // scale.shape[1], dim=1)
    return QLinear(torch.clamp(torch.round(w / s_full), lo, hi).to(torch.int8), scale)


def dequant(ql: QLinear) -> torch.Tensor:
    return ql.q.float() * ql.scale.repeat_interleave(ql.q.shape[1] // ql.scale.shape[1], dim=1)


def scheme_config(scheme: Scheme, group_size: int) -> dict:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    if scheme == "W8A8":
        weights = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel")
        acts = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
        fmt = "int-quantized"
    else:
        bits = 4 if scheme == "W4A16" else 8
        strategy = "channel" if group_size in (-1, 0) else "group"
        weights = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy=strategy,
                                   group_size=None if strategy == "channel" else group_size)
        acts = None
        fmt = "pack-quantized"
    cfg = QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights, input_activations=acts)},
        format=fmt, quantization_status="compressed", ignore=["lm_head"],
    )
    return cfg.model_dump(mode="json", exclude_none=True)


def write_compressed(model, src_dir: Path, out_dir: Path, qlayers: dict[str, QLinear],
                     scheme: Scheme, group_size: int) -> None:
    """Save ``model`` with the layers in ``qlayers`` replaced by their compressed tensors."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    bits = 4 if scheme == "W4A16" else 8
    for name, ql in qlayers.items():
        del state[f"{name}.weight"]
        scale = ql.scale.float().contiguous()
        if scheme == "W8A8":
            state[f"{name}.weight"] = ql.q.contiguous()
            state[f"{name}.weight_scale"] = scale.reshape(-1, 1)
        else:
            state[f"{name}.weight_packed"] = pack_to_int32(ql.q, bits).contiguous()
            state[f"{name}.weight_scale"] = scale
            state[f"{name}.weight_shape"] = torch.tensor(list(ql.q.shape), dtype=torch.int64)
    save_file(state, str(Path(out_dir) / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg["quantization_config"] = scheme_config(scheme, group_size)
    (Path(out_dir) / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)
    copy_tokenizer(src_dir, out_dir)


def load_compressed_dense(out_dir: Path):
    """Dequantize a compressed-tensors checkpoint written here into a dense transformers model."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from transformers import AutoConfig, AutoModelForCausalLM

    out_dir = Path(out_dir)
    raw = json.loads((out_dir / "config.json").read_text())
    qcfg = raw.pop("quantization_config")
    bits = qcfg["config_groups"]["group_0"]["weights"]["num_bits"]
    state = load_file(str(out_dir / "model.safetensors"))
    dense: dict[str, torch.Tensor] = {}
    for key, val in state.items():
        base = key.rsplit(".", 1)[0]
        if key.endswith(".weight_packed"):
            shape = state[f"{base}.weight_shape"].tolist()
            q = unpack_from_int32(val, bits, torch.Size(shape))
            dense[f"{base}.weight"] = dequant(QLinear(q, state[f"{base}.weight_scale"].float()))
        elif key.endswith(".weight") and val.dtype == torch.int8:
            dense[key] = val.float() * state[f"{base}.weight_scale"].float()
        elif not key.endswith((".weight_scale", ".weight_shape")):
            dense[key] = val
    config = AutoConfig.for_model(**raw)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(dense, strict=False)
    if unexpected or [m for m in missing if "rotary" not in m]:
        raise RuntimeError(f"checkpoint mismatch: missing={missing} unexpected={unexpected}")
    return model.eval()
