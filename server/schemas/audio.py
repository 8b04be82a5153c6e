"""Wire types of POST /v1/audio/transcriptions and /v1/audio/speech (OpenAI's shapes), and the
family's contract with the kinds that serve them (speech, on the FrozenRuntime)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, description="A speech adapter: name[@version].")
    input: str = Field(..., min_length=1, max_length=4096)
    voice: str | dict | None = Field(None, description="Accepted; a speech adapter has one voice.")
    instructions: str | None = None
    response_format: Literal["wav", "pcm"] = "wav"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio"] | None = None


@dataclass(frozen=True)
class TranscriptionCall:
    data: bytes
    format: str  # wav | mp3
    prompt: str | None
    max_seconds: float


@dataclass(frozen=True)
class TranscriptionResult:
    text: str
    tokens: int


@dataclass(frozen=True)
class SpeechCall:
    input: str


@dataclass(frozen=True)
class SpeechResult:
    pcm: bytes  # PCM16 mono
    sample_rate: int
