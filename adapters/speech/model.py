"""Freeze-Omni's networks, tiny and floe's own (docs/methods.md, "Freeze-Omni"), and their files.

    16 kHz PCM -> 80-bin Kaldi fbank (25 / 10 ms, samples x 32768) -> global CMVN
      -> 160 ms chunks of 16 frames; per chunk: Conv1d(k3, s2) GELU x2 (4 frames, chunk-local)
      -> + sinusoidal positions (the frame's index in the session)
      -> pre-norm transformer blocks; a chunk attends to itself and to the `left_chunks` chunks
         before it (their block inputs are the per-session cache)             = encoder states
      -> adapter: Conv1d(k2, s2) GELU Linear(d_llm)     = 2 LLM input embeddings per 160 ms chunk
    frozen LLM (the session's live KV cache) -> greedy text tokens; the last layer's (normed)
    hidden state that predicted each token ->
    speech decoder, per phrase (NAR): Linear -> + positions -> transformer over the phrase's
      states -> Linear to `frames_per_token` log-mel frames per token              = mel [F, 80]
    vocoder: mel -> linear magnitude (pseudo-inverse of the mel basis) -> Griffin-Lim (torch STFT,
      fixed initial phase, so it is deterministic) -> 24 kHz PCM
    state head (optional): Linear(d_llm, 3) on the last hidden state: listen / speak / stop

A `speech` adapter is a directory:

    floe_adapter.json     {"kind": "speech", "base_model": <fingerprint>, "version", "config": SpeechConfig}
    speech.safetensors    encoder.*, adapter.*, decoder.*, state_head.* (optional), cmvn_mean, cmvn_istd
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from floe.adapters.speech import KIND, WEIGHTS, SpeechConfig, SpeechKind
from floe.server.kinds import MANIFEST, InvalidAdapter

SUBSAMPLE = 4  # two stride-2 convolutions
ADAPTER_STRIDE = 2


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encodings [..., dim] of integer positions [...]."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angle = positions.to(torch.float32)[..., None] * freq
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block whose attention reads `context` (cached inputs) + its own input."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, d]; context [B, C, d] (normed inputs of earlier frames) or None; mask [B, T, C+T]."""
        b, t, d = x.shape
        h = self.norm1(x)
        keys = h if context is None else torch.cat([context, h], dim=1)
        q = F.linear(h, self.qkv.weight[:d], self.qkv.bias[:d])
        k = F.linear(keys, self.qkv.weight[d:2 * d], self.qkv.bias[d:2 * d])
        v = F.linear(keys, self.qkv.weight[2 * d:], self.qkv.bias[2 * d:])
        split = lambda y: y.view(b, y.shape[1], self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        att = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask[:, None])
        x = x + self.out(att.transpose(1, 2).reshape(b, t, d))
        return x + self.ffn(self.norm2(x))


class StreamingEncoder(nn.Module):
    """Chunk-wise speech encoder: chunk-local subsampling, chunk-causal attention over a cache."""

    def __init__(self, cfg: SpeechConfig) -> None:
        super().__init__()
        e = cfg.encoder_dim
        self.cfg = cfg
        self.subsample = nn.Sequential(nn.Conv1d(cfg.num_mel_bins, e, 3, stride=2, padding=1), nn.GELU(),
                                       nn.Conv1d(e, e, 3, stride=2, padding=1), nn.GELU())
        self.blocks = nn.ModuleList(Block(e, cfg.encoder_heads) for _ in range(cfg.encoder_layers))
        self.norm = nn.LayerNorm(e)

    @property
    def frames_per_chunk(self) -> int:
        return self.cfg.chunk_frames // SUBSAMPLE

    def subsample_chunks(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, n_chunks * chunk_frames, 80] -> [B, n_chunks * frames_per_chunk, e], each chunk alone."""
        b, t, m = feats.shape
        c = self.cfg.chunk_frames
        chunks = feats.reshape(b * (t // c), c, m).transpose(1, 2)
        out = self.subsample(chunks).transpose(1, 2)  # [B * n, c / 4, e]
        return out.reshape(b, -1, out.shape[-1])

    def step(self, chunk: torch.Tensor, offsets: torch.Tensor, caches: list[torch.Tensor] | None,
             cache_mask: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One chunk per row: chunk [B, chunk_frames, 80] (CMVN'd); offsets [B] (frame index of the
        chunk's first output frame); caches per block [B, C, e] left-padded, cache_mask [B, C] (True =
        real). Returns states [B, frames_per_chunk, e] and each block's normed input (the next cache)."""
        x = self.subsample_chunks(chunk)
        t = x.shape[1]
        x = x + sinusoid(offsets[:, None] + torch.arange(t), x.shape[-1])
        own = torch.ones(x.shape[0], t, t, dtype=torch.bool)
        if caches is None:
            mask = own
        else:
            assert cache_mask is not None
            mask = torch.cat([cache_mask[:, None, :].expand(-1, t, -1), own], dim=2)
        inputs = []
        for i, block in enumerate(self.blocks):
            inputs.append(block.norm1(x))
            x = block(x, None if caches is None else caches[i], mask)
        return self.norm(x), inputs

    def forward_full(self, feats: torch.Tensor) -> torch.Tensor:
        """The whole utterance at once (the reference): [1, n * chunk_frames, 80] -> [1, S, e], with
        the chunk-causal mask that streaming implies."""
        x = self.subsample_chunks(feats)
        s = x.shape[1]
        x = x + sinusoid(torch.arange(s), x.shape[-1])[None]
        chunk = torch.arange(s) // self.frames_per_chunk
        diff = chunk[:, None] - chunk[None, :]
        mask = ((diff >= 0) & (diff <= self.cfg.left_chunks))[None]
        for block in self.blocks:
            x = block(x, None, mask)
        return self.norm(x)


class Adapter(nn.Module):
    """Encoder states -> LLM input embeddings (Conv1d k2 s2: 2 per 160 ms chunk)."""

    def __init__(self, cfg: SpeechConfig) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cfg.encoder_dim, cfg.adapter_dim, ADAPTER_STRIDE, stride=ADAPTER_STRIDE)
        self.proj = nn.Linear(cfg.adapter_dim, cfg.llm_hidden)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.conv(states.transpose(1, 2)).transpose(1, 2)))


class SpeechDecoder(nn.Module):
    """Phrase hidden states [B, n, d_llm] -> log-mel frames [B, n * frames_per_token, n_mels] (NAR)."""

    def __init__(self, cfg: SpeechConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(cfg.llm_hidden, cfg.decoder_dim)
        self.blocks = nn.ModuleList(Block(cfg.decoder_dim, cfg.decoder_heads) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(cfg.decoder_dim)
        self.mel = nn.Linear(cfg.decoder_dim, cfg.frames_per_token * cfg.n_mels)

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = states.shape
        x = self.inp(states) + sinusoid(torch.arange(n), self.cfg.decoder_dim)[None]
        keep = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
        att = keep[:, None, :].expand(-1, n, -1)
        for block in self.blocks:
            x = block(x, None, att)
        return self.mel(self.norm(x)).reshape(b, n * self.cfg.frames_per_token, self.cfg.n_mels)


class SpeechModel(nn.Module):
    def __init__(self, cfg: SpeechConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = StreamingEncoder(cfg)
        self.adapter = Adapter(cfg)
        self.decoder = SpeechDecoder(cfg)
        self.state_head = nn.Linear(cfg.llm_hidden, 3) if cfg.state_head else None
        self.register_buffer("cmvn_mean", torch.zeros(cfg.num_mel_bins))
        self.register_buffer("cmvn_istd", torch.ones(cfg.num_mel_bins))

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.cmvn_mean) * self.cmvn_istd


# -- vocoder: Griffin-Lim from log-mel (no neural codec ships here) --------------------------------
@lru_cache(maxsize=4)
def mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """librosa-style (Slaney) mel filterbank [n_mels, n_fft // 2 + 1] from kaldi-native-fbank."""
    import kaldi_native_fbank as knf
    import numpy as np

    opts = knf.MelBanksOptions()
    opts.num_bins = n_mels
    opts.is_librosa = True
    opts.low_freq = 0.0
    frame = knf.FrameExtractionOptions()
    frame.samp_freq = float(sample_rate)
    frame.frame_length_ms = 1000.0 * n_fft / sample_rate
    frame.round_to_power_of_two = True
    matrix = torch.from_numpy(np.asarray(knf.MelBanks(opts, frame, 1.0).get_matrix(), dtype=np.float32))
    if matrix.shape != (n_mels, n_fft // 2 + 1):
        raise ValueError(f"n_fft {n_fft} must be a power of two")
    return matrix


def griffin_lim(log_mel: torch.Tensor, cfg: SpeechConfig) -> torch.Tensor:
    """log-mel [F, n_mels] -> PCM [(F - 1) * hop] float in [-1, 1] (Griffin-Lim, centred frames)."""
    basis = mel_basis(cfg.output_sample_rate, cfg.n_fft, cfg.n_mels)
    magnitude = (torch.linalg.pinv(basis) @ log_mel.exp().T).clamp(min=1e-5)  # [bins, F]
    window = torch.hann_window(cfg.n_fft)
    length = (log_mel.shape[0] - 1) * cfg.hop_length
    stft = dict(n_fft=cfg.n_fft, hop_length=cfg.hop_length, window=window, center=True)
    angles = torch.ones_like(magnitude, dtype=torch.complex64)  # fixed start: deterministic
    pcm = torch.istft(magnitude * angles, length=length, **stft)
    for _ in range(cfg.griffin_lim_iters):
        rebuilt = torch.stft(pcm, return_complex=True, **stft)
        angles = rebuilt / rebuilt.abs().clamp(min=1e-8)
        pcm = torch.istft(magnitude * angles, length=length, **stft)
    peak = pcm.abs().max()
    return pcm / peak * 0.9 if peak > 0.9 else pcm


def vocode(model: SpeechModel, states: torch.Tensor) -> torch.Tensor:
    """A phrase's hidden states [n, d_llm] -> 24 kHz PCM float [(n * frames_per_token - 1) * hop]."""
    with torch.no_grad():
        mel = model.decoder(states[None])[0]
        return griffin_lim(mel, model.cfg)


def pcm16(pcm: torch.Tensor) -> bytes:
    return (pcm.clamp(-1.0, 1.0) * 32767.0).round().to(torch.int16).numpy().astype("<i2").tobytes()


# -- files ----------------------------------------------------------------------------------------
def save(directory: Path, model: SpeechModel, base_fingerprint: str | None, *, version: str = "1",
         extra: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    manifest = {"kind": KIND, "base_model": base_fingerprint, "version": version, "files": [WEIGHTS],
                "config": asdict(model.cfg), **(extra or {})}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return directory


def load(directory: Path) -> SpeechModel:
    from safetensors.torch import load_file

    manifest = SpeechKind.read_manifest(Path(directory))
    try:
        cfg = SpeechConfig.from_dict(manifest.get("config") or {})
    except (TypeError, ValueError) as exc:
        raise InvalidAdapter(f"{MANIFEST}: bad speech config: {exc}", param="source") from exc
    model = SpeechModel(cfg)
    try:
        model.load_state_dict(load_file(str(Path(directory) / WEIGHTS)))
    except (RuntimeError, OSError) as exc:
        raise InvalidAdapter(f"{WEIGHTS} does not match the config: {exc}", param="source") from exc
    return model.eval().requires_grad_(False)


def llm_width(model_dir: Path) -> int:
    return int(json.loads((Path(model_dir) / "config.json").read_text())["hidden_size"])


def init_embedding_scale(model: SpeechModel, rms: float) -> None:
    """Scale the adapter's output layer so its embeddings have the base's embedding RMS."""
    with torch.no_grad():
        model.adapter.proj.weight.mul_(rms / max(model.adapter.proj.weight.std().item() * math.sqrt(
            model.cfg.adapter_dim), 1e-6))
        model.adapter.proj.bias.zero_()


def write(directory: Path, model_dir: Path, *, seed: int = 0, cfg: SpeechConfig | None = None,
          version: str = "1", extra: dict[str, Any] | None = None) -> Path:
    """A seeded random speech adapter for the base in `model_dir` (tests, the docs, the bench); its
    audio embeddings have the RMS of the base's own input embedding rows."""
    from floe.adapters.audio.model import EmbeddingRows
    from floe.server.runtime.model import base_fingerprint

    cfg = cfg or SpeechConfig(llm_hidden=llm_width(model_dir))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SpeechModel(cfg)
        init_embedding_scale(model, EmbeddingRows(model_dir).rms())
    return save(directory, model, base_fingerprint(model_dir), version=version, extra=extra)
