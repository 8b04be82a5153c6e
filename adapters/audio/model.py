"""APT networks (docs/methods.md, "APT"), their files, and the rewrite of a chat request.

    fbank [T, 80] -> utterance mean / variance normalisation -> Conv1d(k3, s2) GELU x2 (T/4)
      -> + sinusoidal positions -> pre-norm transformer -> LayerNorm        = encoder states [S, e]
    queries [N, q] ++ Linear(instruction rows of the LLM's input embedding) + text positions
      -> per block: self-attention over queries + text, cross-attention (queries only) into
         Linear(encoder states), FFN                                      -> LayerNorm -> queries
      -> Linear(q, d_llm)                                                   = soft tokens [N, d_llm]
    clip -> [indicator, soft tokens]: [1 + N, d_llm]

An `audio` adapter is a directory:

    floe_adapter.json     {"kind": "audio", "base_model": <fingerprint>, "version", "config": AudioConfig,
                           "encoder": {where the frozen encoder's weights came from}, ...}
    encoder.safetensors   the frozen encoder (`AudioEncoder`)
    aligner.safetensors   the trained part (`Aligner`): queries, Q-Former, projection, indicator

`write` makes a seeded, untrained adapter offline (tests, docs); `reference.py` builds, with plain
transformers, the embedding sequence vLLM sees, and its greedy tokens (`reference_tokens`).
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from floe.adapters.audio import ALIGNER, ENCODER, KIND, AudioConfig, AudioKind
from floe.adapters.audio.decode import check_format, fbank, load_pcm
from floe.server.errors import InvalidRequest
from floe.server.kinds import MANIFEST, InvalidAdapter


# -- layers ---------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.view(b, y.shape[1], self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        mask = None if kv_mask is None else kv_mask[:, None, None, :]  # True: attend
        out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(kv)), split(self.v(kv)),
                                             attn_mask=mask)
        return self.o(out.transpose(1, 2).reshape(b, t, d))


def ffn(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.ffn = nn.LayerNorm(dim), ffn(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, mask)
        return x + self.ffn(self.norm2(x))


class QFormerBlock(nn.Module):
    """Self-attention over [queries, text]; cross-attention from the queries into the audio; FFN."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm_cross, self.cross_attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.ffn = nn.LayerNorm(dim), ffn(dim)

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor, n_queries: int, audio: torch.Tensor,
                audio_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, self_mask)
        q = x[:, :n_queries]
        q = q + self.cross_attn(self.norm_cross(q), audio, audio_mask)
        x = torch.cat([q, x[:, n_queries:]], dim=1)
        return x + self.ffn(self.norm2(x))


def sinusoid(length: int, dim: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim)
    out[:, 0::2], out[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return out


# -- the networks ---------------------------------------------------------------------------------
class AudioEncoder(nn.Module):
    """fbank frames -> states at 1/4 of the frame rate (40 ms). Frozen when serving and training."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        e = cfg.encoder_dim
        self.subsample = nn.Sequential(nn.Conv1d(cfg.num_mel_bins, e, 3, stride=2, padding=1), nn.GELU(),
                                       nn.Conv1d(e, e, 3, stride=2, padding=1), nn.GELU())
        self.blocks = nn.ModuleList(EncoderBlock(e, cfg.encoder_heads) for _ in range(cfg.encoder_layers))
        self.norm = nn.LayerNorm(e)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B, T, mel] (right-padded), lengths [B] -> states [B, S, e], valid mask [B, S]."""
        mask = torch.arange(feats.shape[1])[None] < lengths[:, None]
        m = mask[..., None].float()
        n = m.sum(1, keepdim=True)
        mean = (feats * m).sum(1, keepdim=True) / n
        std = torch.sqrt(((feats - mean) ** 2 * m).sum(1, keepdim=True) / n + 1e-5)
        x = ((feats - mean) / std * m).transpose(1, 2)  # utterance CMVN, padding zeroed
        for i in (0, 2):
            x = self.subsample[i + 1](self.subsample[i](x))
            lengths = (lengths + 1) // 2  # k3, s2, p1: ceil(L / 2)
            mask = torch.arange(x.shape[-1])[None] < lengths[:, None]
            x = x * mask[:, None, :].float()
        x = x.transpose(1, 2) + sinusoid(x.shape[-1], x.shape[1])
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x), mask


class Aligner(nn.Module):
    """The trained part: Q-Former with learned queries, projection to the LLM, audio indicator."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        q, d = cfg.qformer_dim, cfg.llm_hidden
        self.cfg = cfg
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, q) * 0.02)
        self.text_in = nn.Linear(d, q)
        self.text_pos = nn.Parameter(torch.randn(cfg.max_text_tokens, q) * 0.02)
        self.enc_in = nn.Linear(cfg.encoder_dim, q)
        self.blocks = nn.ModuleList(QFormerBlock(q, cfg.qformer_heads) for _ in range(cfg.qformer_layers))
        self.norm = nn.LayerNorm(q)
        self.proj = nn.Linear(q, d)
        self.indicator = nn.Parameter(torch.randn(d) * 0.02)

    def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor) -> torch.Tensor:
        """audio [B, S, e] + mask, instruction rows [B, L, d_llm] + mask -> clip tokens [B, 1 + N, d_llm]."""
        b, n = audio.shape[0], self.cfg.num_queries
        text = self.text_in(text) + self.text_pos[:text.shape[1]]
        x = torch.cat([self.queries.expand(b, -1, -1), text], dim=1)
        self_mask = torch.cat([torch.ones(b, n, dtype=torch.bool), text_mask], dim=1)
        kv = self.enc_in(audio)
        for block in self.blocks:
            x = block(x, self_mask, n, kv, audio_mask)
        soft = self.proj(self.norm(x[:, :n]))
        return torch.cat([self.indicator.expand(b, 1, -1), soft], dim=1)


class AudioModel(nn.Module):
    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = AudioEncoder(cfg)
        self.aligner = Aligner(cfg)
        self.encoder.requires_grad_(False)

    def clip_tokens(self, feats: torch.Tensor, text_rows: torch.Tensor) -> torch.Tensor:
        """One clip's fbank [T, mel] and its instruction rows [L, d_llm] -> [1 + N, d_llm]."""
        states, mask = self.encoder(feats[None], torch.tensor([feats.shape[0]]))
        text_mask = torch.ones(1, text_rows.shape[0], dtype=torch.bool)
        return self.aligner(states, mask, text_rows[None], text_mask)[0]


# -- files ----------------------------------------------------------------------------------------
def save(directory: Path, model: AudioModel, base_fingerprint: str | None, *, version: str = "1",
         extra: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, net in ((ENCODER, model.encoder), (ALIGNER, model.aligner)):
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(directory / name))
    manifest = {"kind": KIND, "base_model": base_fingerprint, "version": version,
                "config": model.cfg.public(), **(extra or {})}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return directory


def load(directory: Path) -> AudioModel:
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest = AudioKind.read_manifest(directory)
    try:
        model = AudioModel(AudioConfig.from_dict(manifest.get("config") or {}))
        model.encoder.load_state_dict(load_file(str(directory / ENCODER)))
        model.aligner.load_state_dict(load_file(str(directory / ALIGNER)))
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise InvalidAdapter(f"{directory.name}: not a loadable audio adapter: {exc}", param="source") from exc
    return model.eval().requires_grad_(False)


def llm_width(model_dir: Path) -> int:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config.get("hidden_size") or (config.get("text_config") or {}).get("hidden_size"))


def write(directory: Path, model_dir: Path, *, seed: int = 0, cfg: AudioConfig | None = None,
          version: str = "1") -> Path:
    """A seeded, randomly initialised (untrained) audio adapter for the base in `model_dir`."""
    from floe.server.runtime.model import base_fingerprint

    cfg = cfg or AudioConfig(encoder_dim=32, encoder_heads=2, qformer_dim=32, qformer_heads=2, num_queries=4,
                             max_text_tokens=16, llm_hidden=llm_width(model_dir))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AudioModel(cfg)
        init_output_scale(model.aligner, EmbeddingRows(model_dir).rms())
    return save(directory, model, base_fingerprint(model_dir), version=version,
                extra={"encoder": {"weights": f"seeded random initialisation (seed {seed}), untrained"}})


@torch.no_grad()
def init_output_scale(aligner: Aligner, rms: float) -> None:
    """Start the soft tokens and the indicator at the RMS of the LLM's own input embeddings."""
    aligner.proj.weight.mul_(rms * math.sqrt(3.0))  # LayerNorm out (var 1) x default init (var 1/3)
    aligner.proj.bias.zero_()
    aligner.indicator.copy_(torch.randn_like(aligner.indicator) * rms)


# -- the base's input embedding rows --------------------------------------------------------------
_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "embed_in.weight", "word_embeddings.weight")


class EmbeddingRows:
    """Rows of the base checkpoint's input embedding, read one at a time (never the whole matrix)."""

    def __init__(self, model_dir: Path, max_cached: int = 8192) -> None:
        from safetensors import safe_open

        self._lock, self._cache, self._max = threading.Lock(), OrderedDict[int, torch.Tensor](), max_cached
        for path in sorted(Path(model_dir).glob("*.safetensors")):
            with safe_open(str(path), "pt") as fh:
                keys = [k for k in fh.keys() if k.endswith(_EMBED_SUFFIXES) and "vision" not in k]
            if keys:
                self.path, self.key = path, sorted(keys, key=len)[0]
                return
        raise InvalidAdapter(f"{model_dir}: no input embedding found in its safetensors", param="model")

    def __call__(self, ids: list[int]) -> torch.Tensor:
        """[len(ids), d] float32."""
        from safetensors import safe_open

        with self._lock:
            missing = sorted({i for i in ids if i not in self._cache})
            if missing:
                with safe_open(str(self.path), "pt") as fh:
                    rows = fh.get_slice(self.key)
                    for i in missing:
                        self._cache[i] = rows[i:i + 1][0].to(torch.float32)
            for i in ids:
                self._cache.move_to_end(i)
            out = torch.stack([self._cache[i] for i in ids]) if ids else torch.zeros(0, self.width())
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return out

    def width(self) -> int:
        from safetensors import safe_open

        with safe_open(str(self.path), "pt") as fh:
            return int(fh.get_slice(self.key).get_shape()[1])

    def rms(self, sample: int = 256) -> float:
        return float(self(list(range(sample))).pow(2).mean().sqrt())


# -- serving: the loaded adapter and the request rewrite -----------------------------------------
@dataclass(eq=False)
class LoadedAudio:
    model: AudioModel
    tokenizer: Any
    rows: EmbeddingRows
    max_bytes: int
    max_audio_s: float
    max_parts: int
    served_name: str = ""  # the base's name in vLLM, which this adapter's requests are sent as
    # NOTE: a fast tokenizer's __call__ resets its truncation state; two threads must not do it at once
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def instruction_rows(self, text: str) -> torch.Tensor:
        with self._lock:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:self.model.cfg.max_text_tokens]
        return self.rows(list(ids))

    @torch.no_grad()
    def tokens(self, pcm: np.ndarray, instruction: str) -> torch.Tensor:
        feats = torch.from_numpy(fbank(pcm, self.model.cfg.num_mel_bins))
        return self.model.clip_tokens(feats, self.instruction_rows(instruction)).float().contiguous()


def load_for_serving(directory: Path, model_dir: Path, media: Any) -> LoadedAudio:
    from transformers import AutoTokenizer

    from floe.server.runtime.model import base_fingerprint

    AudioKind.check_base(AudioKind.read_manifest(directory), base_fingerprint(model_dir))
    model = load(directory)
    width = llm_width(model_dir)
    if model.cfg.llm_hidden != width or model.aligner.proj.out_features != width:
        raise InvalidAdapter(f"the projection maps to width {model.aligner.proj.out_features}; this base "
                             f"model's hidden size is {width}", param="source")
    return LoadedAudio(model, AutoTokenizer.from_pretrained(model_dir), EmbeddingRows(model_dir),
                       media.max_bytes, media.max_audio_s, media.max_parts)


def encode_tensor(tensor: torch.Tensor) -> str:
    buf = io.BytesIO()
    torch.save(tensor.detach().to(torch.float32).contiguous(), buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def instruction_of(content: list[Any]) -> str:
    """The text parts of one message, joined with "\\n": what the Q-Former is conditioned on."""
    return "\n".join(p["text"] for p in content
                     if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))


def audio_parts(messages: list[Any]) -> list[tuple[int, int]]:
    out = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            out += [(i, j) for j, p in enumerate(content) if isinstance(p, dict) and p.get("type") == "input_audio"]
    return out


def clip_pcm(part: Any, param: str, max_bytes: int, max_audio_s: float) -> np.ndarray:
    """One `input_audio` part -> 16 kHz mono samples (400 on anything wrong, naming `param`)."""
    from floe.server.media import base64_payload

    audio = part.get("input_audio")
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str) or not audio["data"]:
        raise InvalidRequest(f"{param}: an input_audio part needs `data` (base64) and `format`", param=param,
                             code="invalid_audio")
    fmt = check_format(audio.get("format"), f"{param}.format")
    data = base64_payload(audio["data"], f"{param}.data", max_bytes)
    return load_pcm(data, fmt, param, max_audio_s)


def embed_messages(loaded: LoadedAudio, messages: list[Any]) -> list[Any]:
    """A copy of chat `messages` with every `input_audio` part replaced by its `prompt_embeds` part."""
    parts = audio_parts(messages)
    if not parts:
        return messages
    if len(parts) > loaded.max_parts:
        raise InvalidRequest(f"{len(parts)} audio parts; at most {loaded.max_parts} per request "
                             "(media.max_parts)", param="messages", code="too_many_media_parts")
    messages = list(messages)
    for i in sorted({i for i, _ in parts}):
        content = list(messages[i]["content"])
        instruction = instruction_of(content)
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "input_audio":
                param = f"messages[{i}].content[{j}].input_audio"
                pcm = clip_pcm(part, param, loaded.max_bytes, loaded.max_audio_s)
                content[j] = {"type": "prompt_embeds", "data": encode_tensor(loaded.tokens(pcm, instruction))}
        messages[i] = {**messages[i], "content": content}
    return messages


def reference_tokens(model_dir: Path, adapter: Path | LoadedAudio, messages: list[dict[str, Any]],
                     max_tokens: int = 16) -> list[int]:
    """Greedy tokens of transformers `generate(inputs_embeds=...)` (see `reference.py`)."""
    from floe.adapters.audio.reference import reference_tokens as run

    return run(model_dir, adapter, messages, max_tokens)


def reference_inputs_embeds(model_dir: Path, adapter: Path | LoadedAudio, messages: list[dict[str, Any]]):
    """(inputs_embeds [1, T, d], expanded token ids) vLLM sees for `messages` (see `reference.py`)."""
    from floe.adapters.audio.reference import reference_inputs_embeds as build

    return build(model_dir, adapter, messages)
