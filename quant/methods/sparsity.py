"""2:4 pruning: magnitude, Wanda (one-shot) and MaskLLM (learned).

Every pruned output is a dense-format checkpoint whose decoder linears hold exact 2:4 zeros
(lm_head and embeddings stay dense). vLLM and transformers run it as a dense model; it can be
quantized afterwards (GPTQ and RTN keep the zeros).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from floe.quant.calibration import token_batches
from floe.quant.layerwise import capture_layer_inputs, layer_linears, record_inputs, run_layer
from floe.quant.model_io import decoder_linears, load_dense, save_dense
from floe.quant.progress import report
from floe.quant.registry import MethodConfig, MethodResult, register_method
from floe.quant.sparse24 import is_2to4, topk_mask


class MagnitudeConfig(MethodConfig):
    """Keep the two largest-|w| weights of every group of four."""

    method: Literal["magnitude"] = "magnitude"


class WandaConfig(MethodConfig):
    """Wanda (Sun et al. 2023): score |w_ij| * ||x_j||_2 over calibration tokens, layer by layer."""

    method: Literal["wanda"] = "wanda"
    num_samples: int = 64
    seq_len: int = 128


def apply_masks(model, masks: dict[str, torch.Tensor]) -> None:
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        mods[name].weight.data.mul_(mask)


@torch.no_grad()
def wanda_masks(model, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    hs, kw = capture_layer_inputs(model, input_ids)
    masks: dict[str, torch.Tensor] = {}
    for idx, layer in enumerate(model.model.layers):
        linears = layer_linears(model, idx)
        with record_inputs(linears) as rec:
            run_layer(layer, hs, kw)
        for name, lin in linears.items():
            xnorm = torch.cat(rec[name]).float().norm(dim=0)  # [in]
            masks[name] = topk_mask(lin.weight.abs() * xnorm.unsqueeze(0))
            lin.weight.data.mul_(masks[name])
        hs = run_layer(layer, hs, kw)  # next layer sees the pruned one's outputs
        report("wanda layers", idx + 1, len(model.model.layers))
    return masks


def finish(model, model_dir: Path, work_dir: Path, extra: dict | None = None) -> MethodResult:
    bad = [n for n, lin in decoder_linears(model) if not is_2to4(lin.weight.data)]
    if bad:
        raise RuntimeError(f"2:4 pattern broken in {bad}")
    save_dense(model, model_dir, work_dir)
    return MethodResult(engine="vllm", load_kwargs={"dtype": "float32"},
                        extra={"format": "dense", "sparsity": "2:4", **(extra or {})})


@register_method("magnitude", kind="prune", config=MagnitudeConfig)
def _run_magnitude(model_dir: Path, cfg: MagnitudeConfig, texts, work_dir: Path) -> MethodResult:
    model, _ = load_dense(model_dir)
    apply_masks(model, {n: topk_mask(lin.weight.abs()) for n, lin in decoder_linears(model)})
    return finish(model, model_dir, work_dir)


@register_method("wanda", kind="prune", config=WandaConfig, needs_calibration=True)
def _run_wanda(model_dir: Path, cfg: WandaConfig, texts, work_dir: Path) -> MethodResult:
    model, tok = load_dense(model_dir)
    wanda_masks(model, token_batches(tok, texts, cfg.seq_len, cfg.num_samples))
    return finish(model, model_dir, work_dir)


class MaskLLMConfig(MethodConfig):
    """MaskLLM (Fang et al. 2024): learn a categorical choice among the six 2:4 candidates per group.

    Weights stay frozen; only mask logits ``[out, in/4, 6]`` train, through Gumbel-softmax
    samples with temperature annealed ``tau_start -> tau_end`` and logit scale
    ``scale_start -> scale_end``. Logits start from a prior mask (Wanda or magnitude).
    """

    method: Literal["maskllm"] = "maskllm"
    steps: int = Field(200, description="optimizer steps")
    batch_size: int = 8
    seq_len: int = 128
    lr: float = Field(2e-4, description="Adam learning rate of the mask logits (scaled by 100-500)")
    adam_eps: float = Field(1e-8, description="Adam epsilon; larger damps logits whose gradient is "
                            "mostly noise (Adam otherwise moves every logit by ~lr per step)")
    tau_start: float = 4.0
    tau_end: float = 0.05
    scale_start: float = 1e2
    scale_end: float = 5e2
    prior: Literal["wanda", "magnitude", "none"] = "wanda"
    prior_strength: float = Field(3.0, description="initial scaled logit bonus of the prior candidate")
    num_samples: int = Field(4096, description="calibration windows to draw batches from; "
                             "few windows let the 1.5 logits per weight overfit them")
    seed: int = 0
    threads: int | None = Field(None, description="torch threads while training (None: unchanged)")


@register_method("maskllm", kind="prune", config=MaskLLMConfig, needs_calibration=True)
def _run_maskllm(model_dir: Path, cfg: MaskLLMConfig, texts, work_dir: Path) -> MethodResult:
    from floe.quant.methods.maskllm import train_masks

    model, tok = load_dense(model_dir)
    ids = token_batches(tok, texts, cfg.seq_len, cfg.num_samples)
    stats = train_masks(model, ids, cfg)
    return finish(model, model_dir, work_dir, {"maskllm": stats})
