"""Calibration text: a file (one sample per blank-line-separated paragraph) or a list of strings."""

from __future__ import annotations

from pathlib import Path

import torch

from floe.quant.errors import EmptyCalibrationError, QuantError


def load_texts(calibration: str | Path | list[str] | None) -> list[str] | None:
    """Normalise the user's calibration argument; ``None`` stays ``None``."""
    if calibration is None:
        return None
    if isinstance(calibration, (str, Path)) and not isinstance(calibration, list):
        path = Path(calibration)
        if not path.is_file():
            raise QuantError(f"calibration file not found: {path}")
        raw = path.read_text(encoding="utf-8")
        texts = [p.strip() for p in raw.split("\n\n")]
    else:
        texts = [str(t).strip() for t in calibration]
    texts = [t for t in texts if t]
    if not texts:
        raise EmptyCalibrationError("the calibration set is empty (no non-blank text)")
    return texts


SPREAD = 16  # read up to this many times the tokens needed, then sample windows across them


def token_batches(tokenizer, texts: list[str], seq_len: int, max_samples: int) -> torch.Tensor:
    """``[n, seq_len]`` token windows (n <= max_samples), spread evenly over the texts.

    The texts are joined (EOS between them) up to ``SPREAD * seq_len * max_samples`` tokens and
    the windows start at evenly spaced offsets, so a calibration set of many documents is
    sampled across all of them rather than from the first one or two; windows never overlap.
    """
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        if len(ids) >= SPREAD * seq_len * max_samples:
            break
    n = min(max_samples, len(ids) // seq_len)
    if n == 0:
        if not ids:
            raise EmptyCalibrationError("the calibration set tokenizes to nothing")
        return torch.tensor([ids], dtype=torch.long)
    flat = torch.tensor(ids, dtype=torch.long)
    # gaps >= seq_len since n * seq_len <= len(ids); float64 keeps the floor exact at large offsets
    starts = torch.linspace(0, len(ids) - seq_len, n, dtype=torch.float64).long()
    return torch.stack([flat[s:s + seq_len] for s in starts.tolist()])


def calibrated(model_dir: Path, texts: list[str], cfg) -> tuple[torch.nn.Module, torch.Tensor]:
    """What a calibrated method starts from: the dense model and ``cfg``'s token windows
    (``cfg.seq_len`` x at most ``cfg.num_samples``) of the calibration texts."""
    from floe.quant.model_io import load_dense

    model, tokenizer = load_dense(model_dir)
    return model, token_batches(tokenizer, texts, cfg.seq_len, cfg.num_samples)
