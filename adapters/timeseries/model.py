"""Time-LLM: forecasting by reprogramming a frozen LLM (docs/methods.md, Time-LLM).

    series [B, T] -> instance norm -> patches [B, P, patch_len] -> Conv1d embed [B, P, d_model]
      -> cross-attention onto text prototypes (a learned map of the frozen vocabulary) [B, P, d_llm]
      -> frozen LLM on concat(prompt embeds, patch embeds), last layer (final norm)
      -> last P positions, first d_ff dims -> flatten head -> [B, horizon] -> de-normalise
Every channel is its own sequence. The adapter directory holds `floe_adapter.json` (kind
`timeseries`, the base checkpoint's fingerprint, the config below) and `model.safetensors`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from floe.adapters.timeseries import KIND, WEIGHTS, TimeLLMConfig, TimeseriesKind
from floe.server.errors import InvalidRequest
from floe.server.kinds import MANIFEST

if TYPE_CHECKING:
    from floe.server.runtime.model import FrozenModel

EPS = 1e-5


class PatchEmbedding(nn.Module):
    """Replication-padded patches, embedded by a circular Conv1d over the patch axis."""

    def __init__(self, cfg: TimeLLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pad = nn.ReplicationPad1d((0, cfg.stride))
        self.conv = nn.Conv1d(cfg.patch_len, cfg.d_model, kernel_size=3, padding=1,
                              padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T]
        patches = self.pad(x.unsqueeze(1)).squeeze(1).unfold(-1, self.cfg.patch_len, self.cfg.stride)
        return self.conv(patches.transpose(1, 2)).transpose(1, 2)  # [B, P, d_model]


class Reprogramming(nn.Module):
    """Multi-head cross-attention: patches (queries) onto text prototypes (keys / values)."""

    def __init__(self, cfg: TimeLLMConfig, d_llm: int) -> None:
        super().__init__()
        d_keys = cfg.d_ff
        self.heads = cfg.n_heads
        self.query = nn.Linear(cfg.d_model, d_keys * cfg.n_heads)
        self.key = nn.Linear(d_llm, d_keys * cfg.n_heads)
        self.value = nn.Linear(d_llm, d_keys * cfg.n_heads)
        self.out = nn.Linear(d_keys * cfg.n_heads, d_llm)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, target: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        b, p, _ = target.shape
        s = prototypes.shape[0]
        q = self.query(target).view(b, p, self.heads, -1)  # [B, P, H, E]
        k = self.key(prototypes).view(s, self.heads, -1)  # [S, H, E]
        v = self.value(prototypes).view(s, self.heads, -1)
        scores = torch.einsum("bphe,she->bhps", q, k) / math.sqrt(q.shape[-1])
        attn = self.dropout(torch.softmax(scores, dim=-1))
        return self.out(torch.einsum("bhps,she->bphe", attn, v).reshape(b, p, -1))  # [B, P, d_llm]


class TimeLLM(nn.Module):
    """The trainable parts; the frozen LLM is passed in, never owned."""

    def __init__(self, cfg: TimeLLMConfig, vocab_size: int, d_llm: int) -> None:
        super().__init__()
        if cfg.d_ff > d_llm:
            raise ValueError(f"d_ff {cfg.d_ff} exceeds the LLM width {d_llm}")
        self.cfg = cfg
        self.patch = PatchEmbedding(cfg)
        self.mapping = nn.Linear(vocab_size, cfg.num_prototypes)
        self.reprogram = Reprogramming(cfg, d_llm)
        self.head = nn.Linear(cfg.d_ff * cfg.num_patches, cfg.horizon)
        self.dropout = nn.Dropout(cfg.dropout)
        self._prototypes: torch.Tensor | None = None

    def prototypes(self, word_embeddings: torch.Tensor) -> torch.Tensor:
        """[num_prototypes, d_llm]. NOTE: input-independent, so cached once per adapter in eval."""
        if not self.training and self._prototypes is not None:
            return self._prototypes
        protos = self.mapping(word_embeddings.float().T).T
        if not self.training:
            self._prototypes = protos.detach()
        return protos

    def train(self, mode: bool = True) -> TimeLLM:
        self._prototypes = None
        return super().train(mode)

    def forward(self, llm: FrozenModel, series: torch.Tensor) -> torch.Tensor:
        """series [B, seq_len] raw values -> [B, horizon] forecasts in the same units."""
        cfg = self.cfg
        mean = series.mean(-1, keepdim=True)
        std = torch.sqrt(series.var(-1, keepdim=True, unbiased=False) + EPS)
        x = (series - mean) / std
        prompts = [llm.tokenize(p) for p in build_prompts(x, cfg)]
        patches = self.reprogram(self.patch(x), self.prototypes(llm.word_embeddings))  # [B, P, d_llm]
        with torch.no_grad():
            prompt_embeds = [llm.embed(torch.tensor(ids, dtype=torch.long)) for ids in prompts]
        batch = llm.pad_embeds([torch.cat([pe, pa.to(pe.dtype)]) for pe, pa in zip(prompt_embeds, patches)])
        (hidden,) = llm.hidden_states(batch, layers=(-1,), final_norm=True)  # [B, T, d_llm]
        feats = hidden[:, -cfg.num_patches:, :cfg.d_ff].float().transpose(1, 2)  # [B, d_ff, P]
        out = self.dropout(self.head(feats.flatten(1)))  # [B, horizon]
        return out * std + mean


def build_prompts(x: torch.Tensor, cfg: TimeLLMConfig) -> list[str]:
    """Prompt-as-prefix per normalised series [B, T]: description, task, statistics, top-5 lags."""
    lows, highs, medians = x.min(-1).values, x.max(-1).values, x.median(-1).values
    trends = x.diff(dim=-1).sum(-1)
    lags = top_lags(x, 5)
    prompts = []
    for b in range(x.shape[0]):
        prompts.append(
            f"<|start_prompt|>Dataset description: {cfg.description} "
            f"Task description: forecast the next {cfg.horizon} steps given the previous "
            f"{cfg.seq_len} steps information; Input statistics: min value {lows[b]:.3f}, "
            f"max value {highs[b]:.3f}, median value {medians[b]:.3f}, the trend of input is "
            f"{'upward' if trends[b] > 0 else 'downward'}, top 5 lags are : "
            f"{lags[b].tolist()}<|<end_prompt>|>")
    return prompts


def top_lags(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k lags with the largest autocorrelation (FFT), per series [B, T] -> [B, k]."""
    spectrum = torch.fft.rfft(x.float(), dim=-1)
    corr = torch.fft.irfft(spectrum * torch.conj(spectrum), n=x.shape[-1], dim=-1)
    return torch.topk(corr, min(k, x.shape[-1]), dim=-1).indices


def validate_series(channels: list[list[float]], cfg: TimeLLMConfig, max_length: int) -> torch.Tensor:
    """Raw channels -> [N, seq_len] float64 of the last seq_len points; 400 on bad input."""
    rows = []
    for i, values in enumerate(channels):
        param = f"series[{i}]"
        if len(values) < cfg.seq_len:
            raise InvalidRequest(f"{param} has {len(values)} points; this adapter needs at least "
                                 f"{cfg.seq_len} (its lookback)", param=param, code="series_too_short")
        if len(values) > max_length:
            raise InvalidRequest(f"{param} has {len(values)} points; at most {max_length} are "
                                 "accepted", param=param, code="series_too_long")
        tensor = torch.tensor(values, dtype=torch.float64)
        if not torch.isfinite(tensor).all():
            raise InvalidRequest(f"{param} contains NaN or infinite values", param=param,
                                 code="non_finite_values")
        rows.append(tensor[-cfg.seq_len:])
    return torch.stack(rows).float()


# -- adapter directory ---------------------------------------------------------------------
def save(directory: Path, net: TimeLLM, base_fingerprint: str, version: str = "1",
         extra: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    manifest = {"kind": KIND, "base_model": base_fingerprint, "version": version,
                "files": [WEIGHTS], "config": asdict(net.cfg), **(extra or {})}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return directory


def load(directory: Path, llm: FrozenModel) -> TimeLLM:
    from safetensors.torch import load_file

    manifest = TimeseriesKind.read_manifest(Path(directory))
    TimeseriesKind.check_base(manifest, llm.fingerprint)
    cfg = TimeLLMConfig.from_dict(manifest.get("config", {}))
    net = TimeLLM(cfg, vocab_size=llm.word_embeddings.shape[0], d_llm=llm.hidden_size)
    net.load_state_dict(load_file(str(Path(directory) / WEIGHTS)))
    return net.eval()
