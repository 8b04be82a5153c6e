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

or Freeze-Omni's released checkpoint layout, run on floe's implementation of the released
networks below (`FreezeOmniModel`; freeze_omni.py reads the layout and maps the weights). What a
session asks of either is `SpeechNet`.
"""

from __future__ import annotations

import abc
import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from floe.adapters.speech import KIND, WEIGHTS, SpeechConfig, SpeechKind
from floe.adapters.speech.freeze_omni import (
    AdapterSpec,
    CodecSpec,
    DecoderSpec,
    EncoderSpec,
    FreezeOmniConfig,
    speech_text,
)
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


class SpeechNet(nn.Module, abc.ABC):
    """What a session runs of a speech adapter, whatever its networks (floe's `SpeechModel`, or
    Freeze-Omni's released ones, `FreezeOmniModel`): CMVN, one audio chunk per session through the
    encoder and adapter, the embeddings that open a user turn, and a phrase's speech. A session
    keeps each model's encoder stream opaque, so every model caches what its own encoder needs."""

    cfg: SpeechConfig
    cmvn_mean: torch.Tensor
    cmvn_istd: torch.Tensor
    stream_per_turn = False  # True: each user turn's audio starts a fresh encoder stream

    @property
    def turn_prompt(self) -> torch.Tensor | None:
        """Embeddings [n, d_llm] fed after each user turn's header, before its audio (or None)."""
        return None

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.cmvn_mean) * self.cmvn_istd

    @abc.abstractmethod
    def encode_stream(self, chunk: torch.Tensor, streams: list[Any]) -> tuple[torch.Tensor, list[Any]]:
        """One CMVN'd chunk per row [B, chunk_frames, bins] of B sessions, each with its encoder
        stream (None when it starts) -> LLM embeddings [B, embeds_per_chunk, d_llm] and each row's
        next stream (a new object: a session may keep the old one to return to)."""

    @abc.abstractmethod
    def speak(self, llm: Any, states: torch.Tensor, text: str) -> torch.Tensor:
        """A phrase -> 24 kHz PCM float: the hidden states [n, d_llm] that predicted its n tokens,
        and its text; `llm` is the frozen base (a FrozenModel)."""


class SpeechModel(SpeechNet):
    def __init__(self, cfg: SpeechConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = StreamingEncoder(cfg)
        self.adapter = Adapter(cfg)
        self.decoder = SpeechDecoder(cfg)
        self.state_head = nn.Linear(cfg.llm_hidden, 3) if cfg.state_head else None
        self.register_buffer("cmvn_mean", torch.zeros(cfg.num_mel_bins))
        self.register_buffer("cmvn_istd", torch.ones(cfg.num_mel_bins))

    def encode_stream(self, chunk: torch.Tensor, streams: list[Any]) -> tuple[torch.Tensor, list[Any]]:
        """A stream is (each block's cached normed inputs [C, e], the chunk's first frame index);
        the rows' caches are left-padded to the longest, the padding masked."""
        cfg, enc = self.cfg, self.encoder
        keep = cfg.left_chunks * enc.frames_per_chunk
        width = max((s[0][0].shape[0] if s else 0) for s in streams)
        caches = mask = None
        if width:
            caches = [chunk.new_zeros(len(streams), width, cfg.encoder_dim) for _ in enc.blocks]
            mask = torch.zeros(len(streams), width, dtype=torch.bool)
            for row, s in enumerate(streams):
                if s:
                    n = s[0][0].shape[0]
                    for b, c in enumerate(s[0]):
                        caches[b][row, width - n:] = c
                    mask[row, width - n:] = True
        offsets = torch.tensor([s[1] if s else 0 for s in streams])
        out, inputs = enc.step(chunk, offsets, caches, mask)
        nexts = []
        for row, s in enumerate(streams):
            new = [x[row] for x in inputs]
            cache = [torch.cat([old, n])[-keep:] for old, n in zip(s[0], new)] if s else new
            nexts.append((cache, (s[1] if s else 0) + enc.frames_per_chunk))
        return self.adapter(out), nexts

    def speak(self, llm: Any, states: torch.Tensor, text: str) -> torch.Tensor:
        return vocode(self, states)


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


# -- Freeze-Omni's released networks (freeze_omni.py maps the release's checkpoints onto them) -----
CONTEXT_FRAMES = 3  # fbank frames before a chunk that the release's Conv2d front end also reads
MAX_CODEC_TOKENS = 1000  # the release's cap on a phrase's codec tokens
PE_TABLE = 5000  # the release's position table: positions wrap at its last whole chunk
LRELU_SLOPE = 0.1
KV = tuple[torch.Tensor, torch.Tensor]  # keys / values (or rotary cos / sin)


def interleaved_sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """The release's position encodings [..., dim]: sin at even channels, cos at odd ones."""
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    angle = positions.to(torch.float32)[..., None] * div
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)


class ReleasedLayer(nn.Module):
    """The released encoder layer: self-attention whose scores add a learned bias over the keys'
    position encodings, (q + u) k^T + (q + v) P(pos_k)^T, then a ReLU feed-forward."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        d, h = spec.dim, spec.heads
        self.spec = spec
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.pos = nn.Linear(d, d, bias=False)
        self.bias_u, self.bias_v = nn.Parameter(torch.zeros(h, d // h)), nn.Parameter(torch.zeros(h, d // h))
        self.ffn1, self.ffn2 = nn.Linear(d, spec.ffn), nn.Linear(spec.ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.concat = nn.Linear(2 * d, d) if spec.concat_after else None

    def forward(self, x: torch.Tensor, past: KV | None, key_mask: torch.Tensor | None,
                pos_emb: torch.Tensor) -> tuple[torch.Tensor, KV]:
        """x [B, T, d]; past: cached keys / values [B, h, W, d_k]; key_mask [B, W + T] (False =
        padding) or None; pos_emb [B, W + T, d]. Returns x and this chunk's keys / values."""
        b, t, d = x.shape
        h = self.spec.heads
        split = lambda y: y.view(b, -1, h, d // h).transpose(1, 2)  # noqa: E731
        residual = x
        y = self.norm1(x) if self.spec.normalize_before else x
        k, v = split(self.k(y)), split(self.v(y))
        keys = k if past is None else torch.cat([past[0], k], dim=2)
        values = v if past is None else torch.cat([past[1], v], dim=2)
        q = split(self.q(y)).transpose(1, 2)  # [B, T, h, d_k]
        p = split(self.pos(pos_emb))
        scores = ((q + self.bias_u).transpose(1, 2) @ keys.transpose(-2, -1)
                  + (q + self.bias_v).transpose(1, 2) @ p.transpose(-2, -1)) / math.sqrt(d // h)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        att = self.out((scores.softmax(dim=-1) @ values).transpose(1, 2).reshape(b, t, d))
        x = residual + (self.concat(torch.cat([y, att], dim=-1)) if self.concat is not None else att)
        if not self.spec.normalize_before:
            x = self.norm1(x)
        residual = x
        y = self.norm2(x) if self.spec.normalize_before else x
        x = residual + self.ffn2(torch.relu(self.ffn1(y)))
        if not self.spec.normalize_before:
            x = self.norm2(x)
        return x, (k, v)


class ReleasedEncoder(nn.Module):
    """The released streaming encoder over one chunk (its 16 frames and the 3 before them):
    Conv2d(3, s2) ReLU x2 -> Linear -> [Linear LayerNorm ReLU] -> x sqrt(d) -> layers -> LayerNorm."""

    def __init__(self, spec: EncoderSpec, bins: int) -> None:
        super().__init__()
        s, d = spec.subsampling_dim, spec.dim
        self.spec = spec
        self.sub1, self.sub2 = nn.Conv2d(1, s, 3, 2), nn.Conv2d(s, s, 3, 2)
        self.sub_out = nn.Linear(s * (((bins - 1) // 2 - 1) // 2), s)
        self.embed = nn.Linear(s, d) if spec.input_linear else None
        self.embed_norm = nn.LayerNorm(d) if spec.input_linear else None
        self.layers = nn.ModuleList(ReleasedLayer(spec) for _ in range(spec.layers))
        self.after_norm = nn.LayerNorm(d) if spec.normalize_before else None

    @property
    def cache_frames(self) -> int:
        return self.spec.chunk * self.spec.left_chunks

    @property
    def position_wrap(self) -> int:
        return self.spec.chunk * (PE_TABLE // self.spec.chunk) - (self.spec.left_chunks + 1) * self.spec.chunk

    def key_start(self, pe_index: int) -> int:
        """The position the release gives a chunk's first key (its cache's oldest frame). Once the
        cache is full the release's keys sit one chunk earlier than their frames; floe keeps that."""
        return max(0, pe_index % self.position_wrap - (self.spec.left_chunks + 1) * self.spec.chunk)

    def forward(self, feats: torch.Tensor, past: list[KV] | None, widths: list[int],
                pe_index: list[int]) -> tuple[torch.Tensor, list[KV]]:
        """feats [B, 3 + 16, bins] (CMVN'd); past per layer: keys / values [B, h, W, d_k], row b's
        `widths[b]` real ones right-aligned; pe_index: each row's position counter. Returns the
        encoder states [B, 4, d] and each layer's keys / values of this chunk."""
        x = torch.relu(self.sub2(torch.relu(self.sub1(feats[:, None]))))
        b, c, t, f = x.shape
        x = self.sub_out(x.transpose(1, 2).reshape(b, t, c * f))
        if self.embed is not None and self.embed_norm is not None:
            x = torch.relu(self.embed_norm(self.embed(x)))
        x = x * math.sqrt(self.spec.dim)
        width = max(widths)
        own = torch.arange(width + t)[None] - (width - torch.tensor(widths))[:, None]  # index in the row's keys
        start = torch.tensor([self.key_start(p) for p in pe_index])
        pos_emb = interleaved_sinusoid((start[:, None] + own).clamp(min=0), self.spec.dim)
        key_mask = own >= 0 if width else None
        news = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, past[i] if past else None, key_mask, pos_emb)
            news.append(kv)
        return (self.after_norm(x) if self.after_norm is not None else x), news


class ReleasedAdapter(nn.Module):
    """The released CNNSubsampling adapter: causal Conv1d(s) whose left context is the session's
    last k - 1 inputs, the last one of stride 2 (2 LLM embeddings per chunk), then Linear."""

    def __init__(self, spec: AdapterSpec, e: int, d_llm: int) -> None:
        super().__init__()
        k = spec.kernel
        self.spec = spec
        if spec.two_convs:
            self.conv1: nn.Conv1d | None = nn.Conv1d(e, 2 * e, k)
            self.norm1: nn.Module | None = nn.BatchNorm1d(2 * e, eps=1e-3, momentum=0.99)
            self.conv2 = nn.Conv1d(2 * e, 4 * e, k, stride=2)
            self.norm2: nn.Module = nn.BatchNorm1d(4 * e, eps=1e-3, momentum=0.99)
        else:
            self.conv1 = self.norm1 = None
            self.conv2 = nn.Conv1d(e, 2 * e, k, stride=2)
            self.norm2 = nn.LayerNorm(2 * e, eps=1e-3) if spec.layer_norm else nn.BatchNorm1d(2 * e, eps=1e-3,
                                                                                              momentum=0.99)
        self.proj = nn.Linear(self.conv2.out_channels, d_llm)

    def empty_caches(self, rows: int) -> list[torch.Tensor]:
        convs = [c for c in (self.conv1, self.conv2) if c is not None]
        return [torch.zeros(rows, c.in_channels, self.spec.kernel - 1) for c in convs]

    def forward(self, x: torch.Tensor, caches: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x [B, T, e] and each conv's cached inputs [B, C_in, k - 1] -> [B, T / 2, d_llm], new caches."""
        y = x.transpose(1, 2)
        stages: list[tuple[nn.Conv1d, nn.Module]] = [(self.conv2, self.norm2)]
        if self.conv1 is not None and self.norm1 is not None:
            stages.insert(0, (self.conv1, self.norm1))
        gelu = self.spec.gelu and not self.spec.two_convs  # the two-conv form is always ReLU
        news = []
        for (conv, norm), cache in zip(stages, caches):
            y = torch.cat([cache, y], dim=2)
            news.append(y[:, :, y.shape[2] - (self.spec.kernel - 1):])
            y = conv(y)
            y = norm(y.transpose(1, 2)).transpose(1, 2) if isinstance(norm, nn.LayerNorm) else norm(y)
            y = F.gelu(y) if gelu else torch.relu(y)
        return self.proj(y.transpose(1, 2)), news


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotary(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaMA's rotary tables (cos, sin) [T, head_dim], half-split layout."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    angle = positions.float()[:, None] * inv
    angle = torch.cat([angle, angle], dim=-1)
    return angle.cos(), angle.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class LlamaBlock(nn.Module):
    """A LLaMA decoder layer (RMSNorm, rotary multi-head attention, SwiGLU), unmasked: the released
    decoder's passes are bidirectional over a span, or one new token over everything before it."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm, self.mlp_norm = RMSNorm(dim), RMSNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(dim, ffn, bias=False), nn.Linear(dim, ffn, bias=False)
        self.down = nn.Linear(ffn, dim, bias=False)

    def forward(self, x: torch.Tensor, rope: KV, past: KV | None) -> tuple[torch.Tensor, KV]:
        """x [1, T, d] at the positions of `rope`; past keys / values [1, h, P, d_h] -> x and all keys / values."""
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        h = self.attn_norm(x)
        cos, sin = rope
        k, v = rotate(split(self.k(h)), cos, sin), split(self.v(h))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        q = rotate(split(self.q(h)), cos, sin)
        att = ((q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)).softmax(dim=-1) @ v
        x = x + self.o(att.transpose(1, 2).reshape(b, t, d))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h)), (k, v)


class ReleasedSpeechDecoder(nn.Module):
    """The released speech decoder: the phrase's text embeddings through `layers // 2` LLaMA layers
    (bidirectional), a bos embedding before them, the LLM's hidden states as a key / value prefix
    (their own layers, one per main layer) when trained so, then AR top-k sampling of codec tokens."""

    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.spec = spec
        block = lambda: LlamaBlock(spec.dim, spec.heads, spec.ffn)  # noqa: E731
        self.embedding = nn.Embedding(spec.vocab + 4, spec.dim)
        self.pre = nn.ModuleList(block() for _ in range(spec.layers // 2))
        self.layers = nn.ModuleList(block() for _ in range(spec.layers))
        self.prefix = nn.ModuleList(block() for _ in range(spec.layers)) if spec.prefix else None
        self.norm = RMSNorm(spec.dim)
        self.out = nn.Linear(spec.dim, spec.vocab + 4)

    def rope(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return rotary(torch.arange(start, start + length), self.spec.dim // self.spec.heads)

    def generate(self, text: torch.Tensor, prefix: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """text [n, d] (the phrase's LLM token embeddings, each split into d_llm / d rows), prefix
        [m, d] the same of its hidden states -> codec tokens [<= MAX_CODEC_TOKENS] (eos dropped)."""
        spec = self.spec
        bos, sos, eos = spec.vocab, spec.vocab + 1, spec.vocab + 2
        x = text[None]
        for layer in self.pre:
            x = layer(x, self.rope(0, x.shape[1]), None)[0]
        x = torch.cat([self.embedding(torch.tensor([[bos]])), x], dim=1)
        caches: list[KV | None] = [None] * len(self.layers)
        if prefix is not None and self.prefix is not None:
            p = prefix[None]
            for i, layer in enumerate(self.prefix):
                p, caches[i] = layer(p, self.rope(0, p.shape[1]), None)
        rope = self.rope(0, x.shape[1])
        for i, layer in enumerate(self.layers):  # the bos + text pass only fills the caches
            x, caches[i] = layer(x, rope, caches[i])
        position, generated, tokens = x.shape[1], [sos], []
        # NOTE: only codec tokens and eos are drawn: the release would hand bos / sos / pad to the
        # codec, which has no such codes (a trained decoder never emits them)
        barred = torch.tensor([bos, sos, spec.vocab + 3])
        for _ in range(MAX_CODEC_TOKENS):
            x = self.embedding(torch.tensor([[generated[-1]]]))
            rope = self.rope(position, 1)
            position += 1
            for i, layer in enumerate(self.layers):
                x, caches[i] = layer(x, rope, caches[i])
            logits = self.out(self.norm(x))[0, -1]
            if spec.penalty_window > 0:
                # NOTE: as released: a token is penalised once per occurrence in the window (and a
                # negative logit divided by the penalty grows)
                for token in generated[-spec.penalty_window:]:
                    logits[token] = logits[token] / spec.penalty
            logits[barred] = float("-inf")
            probs = logits.softmax(dim=-1)
            top, index = probs.topk(min(spec.top_k, probs.numel()))
            token = int(index[torch.multinomial(top / top.sum(), 1, generator=generator)])
            if token == eos:
                break
            generated.append(token)
            tokens.append(token)
        return torch.tensor(tokens, dtype=torch.long)


class ResBlock(nn.Module):
    """HiFi-GAN residual block: "1" pairs a dilated conv with an undilated one, "2" has one each."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], kind: str) -> None:
        super().__init__()
        conv = lambda d: nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2)  # noqa: E731
        self.convs1 = nn.ModuleList(conv(d) for d in dilations)
        self.convs2 = nn.ModuleList(conv(1) for _ in dilations) if kind == "1" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, c1 in enumerate(self.convs1):
            y = c1(F.leaky_relu(x, LRELU_SLOPE))
            if self.convs2 is not None:
                y = self.convs2[i](F.leaky_relu(y, LRELU_SLOPE))
            x = x + y
        return x


class ReleasedVocoder(nn.Module):
    """TiCodec's synthesis side as released: codes -> codebook vectors [512, T], a global style
    vector (the codes of `global_tokens` in their codebooks, 128 dims, added where the generator
    has 128 channels) -> HiFi-GAN generator -> tanh -> 24 kHz PCM."""

    def __init__(self, spec: CodecSpec) -> None:
        super().__init__()
        self.spec = spec
        groups = len(spec.global_tokens)
        self.codebook = nn.Embedding(spec.n_codes, 512)
        self.style = nn.ModuleList(nn.Embedding(spec.n_codes, 128 // groups) for _ in range(groups))
        c = spec.upsample_initial_channel
        self.conv_pre = nn.Conv1d(512, c, 7, padding=3)
        self.ups = nn.ModuleList(nn.ConvTranspose1d(c // 2 ** i, c // 2 ** (i + 1), k, u, padding=(k - u) // 2)
                                 for i, (u, k) in enumerate(zip(spec.upsample_rates, spec.upsample_kernel_sizes)))
        self.resblocks = nn.ModuleList(ResBlock(c // 2 ** (i + 1), k, d, spec.resblock)
                                       for i in range(len(self.ups))
                                       for k, d in zip(spec.resblock_kernel_sizes, spec.resblock_dilation_sizes))
        self.conv_post = nn.Conv1d(c // 2 ** len(self.ups), 1, 7, padding=3)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [T] -> PCM float [T * prod(upsample_rates)]."""
        style = torch.cat([e.weight[t] for e, t in zip(self.style, self.spec.global_tokens)])
        x = self.conv_pre(self.codebook(codes).T[None])
        per = len(self.spec.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            x = sum(block(x) for block in self.resblocks[i * per:(i + 1) * per]) / per
            if x.shape[1] == style.shape[0]:
                x = x + style[None, :, None]
        return torch.tanh(self.conv_post(F.leaky_relu(x, LRELU_SLOPE)))[0, 0]


@dataclass(frozen=True)
class ReleasedStream:
    """A session's state in the released encoder and adapter."""

    frames: torch.Tensor  # the last CONTEXT_FRAMES CMVN'd fbank frames [3, bins]
    kv: list[KV]  # per layer: keys / values of the last frames [h, W, d_k]
    pe_index: int  # the release's position counter (advances a chunk per chunk, wraps)
    adapter: list[torch.Tensor]  # each adapter conv's last k - 1 inputs [C_in, k - 1]


class FreezeOmniModel(SpeechNet):
    """Freeze-Omni's released networks on floe's speech session: the streaming encoder and adapter,
    the prompt embeddings before each turn's audio, the state head, the AR speech decoder and the
    TiCodec generator. The encoder restarts with each user turn, as the release's does."""

    stream_per_turn = True

    def __init__(self, cfg: SpeechConfig, spec: FreezeOmniConfig) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.encoder = ReleasedEncoder(spec.encoder, cfg.num_mel_bins)
        self.adapter = ReleasedAdapter(spec.adapter, spec.encoder.dim, cfg.llm_hidden)
        self.prompt = nn.Embedding(spec.adapter.prompt, cfg.llm_hidden) if spec.adapter.prompt else None
        self.state_head = nn.Linear(cfg.llm_hidden, 3)
        self.decoder = ReleasedSpeechDecoder(spec.decoder)
        self.vocoder = ReleasedVocoder(spec.codec)
        self.register_buffer("cmvn_mean", torch.zeros(cfg.num_mel_bins))
        self.register_buffer("cmvn_istd", torch.ones(cfg.num_mel_bins))

    @property
    def turn_prompt(self) -> torch.Tensor | None:
        return self.prompt.weight if self.prompt is not None else None

    def encode_stream(self, chunk: torch.Tensor, streams: list[Any]) -> tuple[torch.Tensor, list[Any]]:
        """A fresh stream starts as the release's does: zero fbank frames before the chunk (raw zeros,
        CMVN'd), empty caches, position 0. The rows' caches are left-padded, the padding masked."""
        rows, enc = len(streams), self.encoder
        zeros = self.normalize(chunk.new_zeros(CONTEXT_FRAMES, chunk.shape[-1]))
        frames = torch.stack([s.frames if s else zeros for s in streams])
        widths = [s.kv[0][0].shape[1] if s else 0 for s in streams]
        width = max(widths)
        past = None
        if width:
            past = []
            for layer in range(len(enc.layers)):
                ref = next(s for s in streams if s).kv[layer][0]
                keys, values = ref.new_zeros(rows, ref.shape[0], width, ref.shape[2]), ref.new_zeros(
                    rows, ref.shape[0], width, ref.shape[2])
                for row, s in enumerate(streams):
                    if s:
                        keys[row, :, width - widths[row]:], values[row, :, width - widths[row]:] = s.kv[layer]
                past.append((keys, values))
        pe = [s.pe_index if s else 0 for s in streams]
        states, news = enc(torch.cat([frames, chunk], dim=1), past, widths, pe)
        caches = [torch.stack([s.adapter[i] if s else c[row] for row, s in enumerate(streams)])
                  for i, c in enumerate(self.adapter.empty_caches(rows))]
        embeds, adapter = self.adapter(states, caches)
        keep = enc.cache_frames
        nexts = []
        for row, s in enumerate(streams):
            kv = [(k[row], v[row]) if not s else (torch.cat([s.kv[i][0], k[row]], dim=1)[:, -keep:],
                                                  torch.cat([s.kv[i][1], v[row]], dim=1)[:, -keep:])
                  for i, (k, v) in enumerate(news)]
            nexts.append(ReleasedStream(chunk[row, -CONTEXT_FRAMES:], kv,
                                        pe[row] % enc.position_wrap + enc.spec.chunk, [a[row] for a in adapter]))
        return embeds, nexts

    def speak(self, llm: Any, states: torch.Tensor, text: str) -> torch.Tensor:
        """The decoder reads the phrase's text (the release's normalisation, the base's embeddings)
        with the phrase's hidden states as its prefix; a seeded top-k draw, so a phrase always
        sounds the same."""
        d = self.spec.decoder.dim
        ids = llm.tokenize(speech_text(text))
        with torch.no_grad():
            words = llm.embed(torch.tensor(ids, dtype=torch.long)).reshape(-1, d)
            prefix = states.reshape(-1, d) if self.spec.decoder.prefix else None
            codes = self.decoder.generate(words, prefix, torch.Generator().manual_seed(0))
            return self.vocoder(codes) if codes.numel() else torch.zeros(0)


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
