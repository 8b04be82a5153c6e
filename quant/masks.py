"""2:4 masks as artefacts: ``floe_mask.npz`` next to the pruned weights, reusable on the same base.

Packing: a 2:4 group's mask is one of the six candidates (``sparse24.CANDIDATES``), so each
group is a 3-bit index; two groups share a byte (low nibble: even group). A linear
``[out, in]`` becomes ``uint8 [out, ceil(in / 8)]``: 1 bit per weight, 1/32 of its fp32 size.
``__meta__`` (JSON) holds the format, shapes, the method and the sha256 of the base checkpoint
the mask was made for. The file is ``.npz`` rather than ``.safetensors`` on purpose: engines
load every top-level ``*.safetensors`` of a model directory as weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from floe.quant.errors import QuantError
from floe.quant.sparse24 import CANDIDATES, groups

MASK_FILE = "floe_mask.npz"
FORMAT = "floe-2of4-mask"


_BITS = torch.tensor([8.0, 4.0, 2.0, 1.0])
_LUT = torch.full((16,), -1, dtype=torch.long)  # 4-bit pattern -> candidate index (or -1)
_LUT[(CANDIDATES @ _BITS).long()] = torch.arange(len(CANDIDATES))


class MaskFileError(QuantError):
    """A mask file that is missing, malformed, or made for another checkpoint."""


def mask_to_index(mask: torch.Tensor) -> torch.Tensor:
    """0/1 mask ``[out, in]`` keeping exactly two of every four -> candidate index ``[out, in/4]``."""
    code = (groups(mask.float()) @ _BITS).long()  # [out, in/4]: the group's pattern as 4 bits
    idx = _LUT[code]
    if bool((idx < 0).any()):
        raise MaskFileError("mask is not exactly 2 kept of every 4")
    return idx


def pack(idx: torch.Tensor) -> np.ndarray:
    """Indices ``[out, G]`` (0..5) -> ``uint8 [out, ceil(G / 2)]``."""
    a = idx.to(torch.uint8).numpy()
    if a.shape[1] % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
    return (a[:, 0::2] | (a[:, 1::2] << 4)).astype(np.uint8)


def unpack(packed: np.ndarray, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack` -> 0/1 float mask ``[out, in_features]``."""
    out = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.int64)
    out[:, 0::2], out[:, 1::2] = packed & 0x0F, packed >> 4
    idx = out[:, : in_features // 4]
    if idx.size and int(idx.max()) > 5:
        raise MaskFileError("corrupt mask file: candidate index > 5")
    return CANDIDATES[torch.from_numpy(idx)].reshape(idx.shape[0], in_features)


def save_masks(path: Path, masks: dict[str, torch.Tensor], meta: dict) -> Path:
    arrays = {name: pack(mask_to_index(m)) for name, m in masks.items()}
    meta = {"format": FORMAT, "version": 1, **meta,
            "shapes": {name: list(m.shape) for name, m in masks.items()}}
    path = Path(path)
    with open(path, "wb") as f:  # np.savez would append .npz to a name without it
        np.savez_compressed(f, __meta__=np.array(json.dumps(meta)), **arrays)
    return path


def load_masks(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(name -> 0/1 mask ``[out, in]``, metadata). ``path``: the file or a pruned output dir."""
    path = Path(path)
    if path.is_dir():
        path = path / MASK_FILE
    if not path.is_file():
        raise MaskFileError(f"no mask file at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            if meta.get("format") != FORMAT:
                raise MaskFileError(f"{path} is not a {FORMAT} file")
            masks = {name: unpack(z[name], shape[1]) for name, shape in meta["shapes"].items()}
    except (ValueError, KeyError, OSError) as exc:
        raise MaskFileError(f"unreadable mask file {path}: {exc}") from exc
    return masks, meta
