"""The `audio` kind: APT (docs/methods.md, "APT: acoustic prompt tuning") for chat.

Sound in a chat request, as the official `openai` client sends it:

    {"type": "input_audio", "input_audio": {"data": <base64>, "format": "wav" | "mp3"}}

Inside the LLMServer replica (`rewrite_request`, so no tensor crosses the gateway), every such
part becomes soft tokens for the frozen LLM:

    base64 -> WAV / MP3 decode (miniaudio, no torchaudio / ffmpeg) -> mono -> 16 kHz
    (scipy resample_poly) -> 80-bin Kaldi fbank (kaldi-native-fbank, 25 ms / 10 ms, no dither)
    -> frozen audio encoder -> Q-Former (learned queries; self-attention over queries + the
    instruction text, cross-attention into the encoder states) -> Linear to the LLM width
    -> [indicator, q_1 .. q_N]  (a learned audio-indicator embedding, then N soft tokens)

and the part is replaced, in place, by `{"type": "prompt_embeds", "data": base64(torch.save(
tensor [1 + N, d_llm] float32))}`, which vLLM (`--enable-prompt-embeds`) splices at a
placeholder token of the rendered chat template.

Placement. APT inserts the indicator and soft tokens after BOS, before the text. With a chat
template the place of a clip is where its part is in the turn: vLLM renders a `prompt_embeds`
part as a text part holding one placeholder token (the template's own joining of parts: the
built-in ChatML template concatenates them; a "string"-format template joins them with "\n")
and expands it to 1 + N rows. So `[audio, text]` puts the soft tokens first in the user turn,
right after `<|im_start|>user\n` (APT's "audio, then instruction"), and several clips
interleave with the text in the order sent.

Instruction conditioning. The Q-Former reads the text parts of the same message (joined with
"\n", the first `max_text_tokens` tokens of the base tokenizer) as the frozen LLM's own input
embedding rows, mapped by a trained Linear into the Q-Former width. Those rows are read one by
one from the base checkpoint's safetensors (never the whole matrix), so no second tokenizer or
vocabulary ships with an adapter, the text is seen in the space the LLM reads it in, and any
base works. A message with no text conditions on nothing (queries only).

The encoder. No pretrained audio encoder (AudioMAE, BEATs) can be downloaded here, so an adapter
carries its own small one (`encoder.safetensors`: conv subsampling x4 + a transformer over
utterance-normalised fbank frames); the manifest says where its weights came from. Trainable in
APT, and in `floe adapters train audio`: the Q-Former, the projection and the indicator.

This module is torch-free (manifest, config); `decode.py` turns bytes into fbank frames and
`model.py` holds the networks, the rewrite and the reference of the APT test.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from floe.server.kinds import InvalidAdapter, KindConfig, SoftTokenKind, register_kind, safetensors_shapes

if TYPE_CHECKING:
    from floe.adapters.audio.model import LoadedAudio
    from floe.server.engine.llm_server import LLMBackbone
    from floe.server.kinds import AdapterInfo, EngineLimits

KIND = "audio"
ENCODER = "encoder.safetensors"  # the frozen audio encoder
ALIGNER = "aligner.safetensors"  # trained: Q-Former, projection, indicator
SAMPLE_RATE = 16_000
FORMATS = ("wav", "mp3")


@dataclass(frozen=True)
class AudioConfig(KindConfig):
    num_mel_bins: int = 80
    encoder_dim: int = 128
    encoder_layers: int = 2
    encoder_heads: int = 4
    qformer_dim: int = 128
    qformer_layers: int = 2
    qformer_heads: int = 4
    num_queries: int = 32
    max_text_tokens: int = 64
    llm_hidden: int = 256

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"config.{f.name} must be a positive integer, got {value!r}")
        if self.encoder_dim % self.encoder_heads or self.qformer_dim % self.qformer_heads:
            raise ValueError("encoder_dim / qformer_dim must be divisible by their number of heads")

    @property
    def tokens_per_clip(self) -> int:
        return 1 + self.num_queries  # the indicator, then the soft tokens




def expected_shapes(cfg: AudioConfig) -> dict[str, dict[str, list[int]]]:
    """The tensors `manifest` checks (every one `model.py` needs to build the nets has its shape)."""
    e, q, d = cfg.encoder_dim, cfg.qformer_dim, cfg.llm_hidden
    return {
        ENCODER: {"subsample.0.weight": [e, cfg.num_mel_bins, 3], "subsample.2.weight": [e, e, 3],
                  "norm.weight": [e]},
        ALIGNER: {"queries": [cfg.num_queries, q], "text_in.weight": [q, d],
                  "text_pos": [cfg.max_text_tokens, q], "enc_in.weight": [q, e], "proj.weight": [d, q],
                  "indicator": [d]},
    }


@register_kind
class AudioKind(SoftTokenKind):
    name = KIND
    accepts = ("input_audio",)
    trainer = "floe.adapters.audio.cli:train_audio"
    demo = "floe.adapters.audio.demo:build"
    config = AudioConfig
    files = (ENCODER, ALIGNER)

    def describe(self, directory: Path, manifest: dict[str, Any], cfg: AudioConfig,
                 limits: EngineLimits) -> AdapterInfo:
        for filename, want in expected_shapes(cfg).items():
            shapes = safetensors_shapes(directory / filename)
            for name, shape in want.items():
                if shapes.get(name) != shape:
                    raise InvalidAdapter(f"{filename}: {name} has shape {shapes.get(name)}, the config "
                                         f"says {shape}", param="source")
        encoder = manifest.get("encoder") if isinstance(manifest.get("encoder"), dict) else {}
        return self.info(manifest, **cfg.public(), tokens_per_clip=cfg.tokens_per_clip,
                         sample_rate=SAMPLE_RATE, formats=list(FORMATS), encoder=encoder)

    # -- execution (LLMServer replica) ------------------------------------------------------------
    async def load(self, directory: Path, backbone: LLMBackbone, ref: Any) -> LoadedAudio:
        from floe.adapters.audio.model import load_for_serving

        loaded = await asyncio.to_thread(load_for_serving, Path(directory), backbone.model_dir,
                                         backbone.config.media)
        loaded.served_name = backbone.served_name
        return loaded

    def embed(self, loaded: LoadedAudio, messages: list[Any]) -> list[Any]:
        """Every `input_audio` part -> a `prompt_embeds` part at the same place (400 on bad audio)."""
        from floe.adapters.audio.model import embed_messages

        return embed_messages(loaded, messages)
