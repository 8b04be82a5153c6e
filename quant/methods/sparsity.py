"""2:4 pruning: magnitude and Wanda (one-shot), applying a saved mask, and the shared writer.

Every pruned output is a dense-format checkpoint whose decoder linears hold exact 2:4 zeros
(lm_head and embeddings stay dense), plus its mask packed in ``floe_mask.npz``
(:mod:`floe.quant.masks`). vLLM and transformers run it as a dense model; it can be quantized
afterwards (GPTQ and RTN keep the zeros). SparseGPT is in ``sparsegpt.py``, MaskLLM in
``maskllm.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from floe.quant.calibration import calibrated
from floe.quant.layerwise import sequential
from floe.quant.manifest import hash_model_dir
from floe.quant.masks import MASK_FILE, MaskFileError, load_masks, save_masks
from floe.quant.model_io import decoder_linears, load_dense, save_dense
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


class MaskFileConfig(MethodConfig):
    """Apply a mask saved by an earlier ``floe prune`` (its ``floe_mask.npz`` or output dir)."""

    method: Literal["mask"] = "mask"
    path: Path = Field(description="floe_mask.npz, or a pruned output directory holding one")
    check_base: bool = Field(True, description="refuse a mask made for another checkpoint "
                             "(sha256 of the base's weight and config files)")


def magnitude_masks(model) -> dict[str, torch.Tensor]:
    return {n: topk_mask(lin.weight.abs()) for n, lin in decoder_linears(model)}


def apply_masks(model, masks: dict[str, torch.Tensor]) -> None:
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        mods[name].weight.data.mul_(mask.to(mods[name].weight.dtype))


def wanda_masks(model, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place with Wanda, layer by layer; returns keep masks ``[out, in]``."""
    def prune(name: str, lin: torch.nn.Linear, X: torch.Tensor) -> torch.Tensor:
        keep = topk_mask(lin.weight.abs() * X.norm(dim=0).unsqueeze(0))  # |W| * ||x||, per row
        lin.weight.data.mul_(keep)
        return keep

    return sequential(model, input_ids, "wanda", prune)


def finish(model, model_dir: Path, work_dir: Path, masks: dict[str, torch.Tensor],
           extra: dict | None = None, method: str | None = None) -> MethodResult:
    """Check the 2:4 pattern, save the pruned checkpoint and its packed mask beside it."""
    names = {n for n, _ in decoder_linears(model)}
    bad = sorted(n for n, lin in decoder_linears(model) if not is_2to4(lin.weight.data))
    if bad or set(masks) != names:
        raise RuntimeError(f"2:4 pattern broken in {bad or sorted(names ^ set(masks))}")
    save_dense(model, model_dir, work_dir)
    save_masks(work_dir / MASK_FILE, masks, {"method": method, "base_sha256": hash_model_dir(model_dir)})
    return MethodResult(engine="vllm", load_kwargs={"dtype": "float32"},
                        extra={"format": "dense", "sparsity": "2:4", "mask_file": MASK_FILE,
                               **(extra or {})})


@register_method("magnitude", kind="prune", config=MagnitudeConfig)
def _run_magnitude(model_dir: Path, cfg: MagnitudeConfig, texts, work_dir: Path) -> MethodResult:
    model, _ = load_dense(model_dir)
    masks = magnitude_masks(model)
    apply_masks(model, masks)
    return finish(model, model_dir, work_dir, masks, method="magnitude")


@register_method("wanda", kind="prune", config=WandaConfig, needs_calibration=True)
def _run_wanda(model_dir: Path, cfg: WandaConfig, texts, work_dir: Path) -> MethodResult:
    model, ids = calibrated(model_dir, texts, cfg)
    masks = wanda_masks(model, ids)
    return finish(model, model_dir, work_dir, masks, method="wanda")


@register_method("mask", kind="prune", config=MaskFileConfig)
def _run_mask_file(model_dir: Path, cfg: MaskFileConfig, texts, work_dir: Path) -> MethodResult:
    masks, meta = load_masks(cfg.path)
    if cfg.check_base and meta.get("base_sha256") != hash_model_dir(model_dir):
        raise MaskFileError(f"{cfg.path} was made for another checkpoint (base sha256 "
                            f"{str(meta.get('base_sha256'))[:12]}...); pass check_base=false to apply it anyway")
    model, _ = load_dense(model_dir)
    shapes = {n: list(lin.weight.shape) for n, lin in decoder_linears(model)}
    if shapes != meta["shapes"]:
        raise MaskFileError(f"{cfg.path}: layer names or shapes do not match {model_dir}")
    apply_masks(model, masks)
    return finish(model, model_dir, work_dir, masks, {"mask_from": meta.get("method")},
                  method=meta.get("method"))
