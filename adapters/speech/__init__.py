"""The `speech` kind: Freeze-Omni speech-to-speech on a frozen LLM (docs/methods.md, "Freeze-Omni").

A stateful kind (ARCHITECTURE.md, "Stateful kinds"): a session holds the streaming encoder's
caches, the frozen LLM's live KV cache and the turn's output cursor. Its three session methods
run on the SessionRuntime deployment (server/sessions/):

    open(backbone, loaded, config) -> state      the conversation's opening tokens, empty caches
    step(backbone, [(loaded, state, ops), ...])  ONE batched LLM forward over every session with
                                                 work this tick (audio embeddings being appended
                                                 while the user speaks, or the next token of an
                                                 answer), each at its own position -> events
    close(state)

and the same adapter answers `POST /v1/audio/transcriptions` (encoder + LLM, text out) and
`POST /v1/audio/speech` (text in: the LLM reads the text teacher-forced, its hidden states drive
the speech decoder) through the FrozenRuntime (`prepare` / `run`).

This module is torch-free (config, manifest); `model.py` holds the networks and the vocoder,
`session.py` the batched step, `reference.py` the plain-transformers reference of the tests,
`freeze_omni.py` the loader of Freeze-Omni's released checkpoint layout, `demo.py` the demo.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from floe.server.kinds import AdapterInfo, EngineLimits, RuntimeKind, register_kind

if TYPE_CHECKING:
    from floe.adapters.speech.session import SessionState

KIND = "speech"
WEIGHTS = "speech.safetensors"
INPUT_SAMPLE_RATE = 16_000  # what the encoder hears (the socket's 24 kHz is resampled)
OUTPUT_SAMPLE_RATE = 24_000


@dataclass(frozen=True)
class SpeechConfig:
    num_mel_bins: int = 80
    chunk_frames: int = 16  # 160 ms of 10 ms fbank frames
    encoder_dim: int = 64
    encoder_layers: int = 2
    encoder_heads: int = 4
    left_chunks: int = 16  # encoder attention context: this many chunks before the current one
    adapter_dim: int = 128
    llm_hidden: int = 256
    decoder_dim: int = 64
    decoder_layers: int = 2
    decoder_heads: int = 4
    frames_per_token: int = 8  # mel frames the speech decoder makes per text token
    n_mels: int = 80
    n_fft: int = 1024
    hop_length: int = 256
    output_sample_rate: int = OUTPUT_SAMPLE_RATE
    griffin_lim_iters: int = 16
    phrase_tokens: int = 8  # a phrase ends at punctuation or after this many tokens
    max_response_tokens: int = 64
    state_head: bool = False  # Freeze-Omni's listen / speak / stop head

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("bool", bool):
                if not isinstance(value, bool):
                    raise ValueError(f"config.{f.name} must be true or false, got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"config.{f.name} must be a positive integer, got {value!r}")
        if self.chunk_frames % 8:
            raise ValueError("config.chunk_frames must be a multiple of 8 (4x subsampling, then the adapter's 2x)")
        if self.encoder_dim % self.encoder_heads or self.decoder_dim % self.decoder_heads:
            raise ValueError("encoder_dim / decoder_dim must be divisible by their number of heads")
        if self.encoder_dim % 2 or self.decoder_dim % 2:
            raise ValueError("encoder_dim / decoder_dim must be even (sinusoidal positions)")
        if self.n_fft & (self.n_fft - 1):
            raise ValueError("config.n_fft must be a power of two")

    @property
    def chunk_samples(self) -> int:
        return self.chunk_frames * INPUT_SAMPLE_RATE // 100

    @property
    def embeds_per_chunk(self) -> int:
        return self.chunk_frames // 8

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeechConfig:
        if not isinstance(data, dict):
            raise ValueError("config must be an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        return cls(**data)

    def public(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SessionConfig:
    """What a session may set (OpenAI's `session.update`, the parts the kind uses)."""

    instructions: str = ""
    max_output_tokens: int | None = None  # None: the adapter's max_response_tokens


@register_kind
class SpeechKind(RuntimeKind):
    name = KIND
    serves = ("realtime", "transcriptions", "speech")
    demo = "floe.adapters.speech.demo:build"

    config = SpeechConfig
    files = (WEIGHTS,)

    @classmethod
    def detect(cls, directory: Path) -> bool:
        from floe.adapters.speech.freeze_omni import is_freeze_omni

        return is_freeze_omni(directory)

    def manifest(self, directory: Path, limits: EngineLimits) -> AdapterInfo:
        """floe's own speech directories through the template; Freeze-Omni's released layout (no
        floe_adapter.json) through its own reader, `freeze_omni.describe`."""
        from floe.adapters.speech import freeze_omni

        if freeze_omni.is_freeze_omni(directory):
            return freeze_omni.describe(self, Path(directory))
        return super().manifest(directory, limits)

    def describe(self, directory: Path, manifest: dict[str, Any], cfg: SpeechConfig,
                 limits: EngineLimits) -> AdapterInfo:
        return self.info(manifest, **cfg.public(), input_sample_rate=INPUT_SAMPLE_RATE,
                         voice=manifest.get("voice", "griffin-lim"))

    # -- FrozenRuntime (audio routes) and SessionRuntime (realtime) -------------------------
    def load(self, directory: Path, backbone: Any, ref: Any) -> Any:
        from floe.adapters.speech.session import load_for_serving

        return load_for_serving(Path(directory), backbone.llm)

    def prepare(self, backbone: Any, loaded: Any, request: Any) -> Any:
        from floe.adapters.speech.session import prepare_call

        return prepare_call(backbone, loaded, request)

    def run(self, backbone: Any, batch: list[tuple[Any, Any]]) -> list[Any]:
        from floe.adapters.speech.session import run_calls

        return run_calls(backbone, batch)

    def open(self, backbone: Any, loaded: Any, config: SessionConfig) -> SessionState:
        from floe.adapters.speech.session import open_session

        return open_session(backbone.llm, loaded, config)

    def step(self, backbone: Any, batch: list[tuple[Any, SessionState, list[Any]]]) -> list[list[dict[str, Any]]]:
        from floe.adapters.speech.session import step

        return step(backbone.llm, batch)

    def busy(self, state: SessionState) -> bool:
        from floe.adapters.speech.session import busy

        return busy(state)

    def close(self, state: SessionState) -> None:
        state.closed = True
