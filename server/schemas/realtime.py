"""Wire types of `/v1/realtime` (OpenAI Realtime, GA events): the client events floe answers and
the session object. Server events are built by `server/services/realtime.py` in OpenAI's shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PCM_RATE = 24_000


class AudioFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["audio/pcm"] = Field("audio/pcm", description="Only 16-bit PCM, mono, little-endian.")
    rate: Literal[24000] = PCM_RATE


class ServerVad(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(300, ge=0, le=5000)
    silence_duration_ms: int = Field(500, ge=50, le=10000)
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None

    def frontend(self) -> dict[str, Any]:
        return self.model_dump(exclude={"type", "idle_timeout_ms"})


class AudioInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: AudioFormat | None = None
    turn_detection: ServerVad | None = None
    transcription: None = None
    noise_reduction: None = None


class AudioOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: AudioFormat | None = None
    voice: str | None = None
    speed: float | None = None


class Audio(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: AudioInput | None = None
    output: AudioOutput | None = None


class SessionUpdate(BaseModel):
    """The `session` of `session.update`: the fields a speech session has (others are refused)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["realtime"] = "realtime"
    model: str | None = None
    instructions: str | None = Field(None, max_length=20_000)
    output_modalities: list[Literal["audio"]] | None = None
    audio: Audio | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    tools: list[Any] | None = Field(None, max_length=0)
    tool_choice: Literal["auto", "none"] | None = None


class ResponseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_modalities: list[Literal["audio"]] | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    conversation: Literal["auto"] | None = None
    instructions: None = None
    metadata: dict[str, str] | None = None


class ClientEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    event_id: str | None = None


class SessionUpdateEvent(ClientEvent):
    type: Literal["session.update"]
    session: SessionUpdate


class AppendEvent(ClientEvent):
    type: Literal["input_audio_buffer.append"]
    audio: str


class CommitEvent(ClientEvent):
    type: Literal["input_audio_buffer.commit"]


class ClearEvent(ClientEvent):
    type: Literal["input_audio_buffer.clear"]


class ResponseCreateEvent(ClientEvent):
    type: Literal["response.create"]
    response: ResponseParams | None = None


class ResponseCancelEvent(ClientEvent):
    type: Literal["response.cancel"]
    response_id: str | None = None


class TruncateEvent(ClientEvent):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = Field(0, ge=0, le=0)
    audio_end_ms: int = Field(..., ge=0)


CLIENT_EVENTS: dict[str, type[ClientEvent]] = {
    cls.model_fields["type"].annotation.__args__[0]: cls  # type: ignore[union-attr]
    for cls in (SessionUpdateEvent, AppendEvent, CommitEvent, ClearEvent, ResponseCreateEvent,
                ResponseCancelEvent, TruncateEvent)
}
# known to OpenAI's protocol, refused by a speech session with a clear error
UNSUPPORTED = {
    "conversation.item.create": "a speech session takes audio (input_audio_buffer.append), not items",
    "conversation.item.delete": "a speech session's conversation lives in its KV cache; items cannot be deleted",
    "conversation.item.retrieve": "items are not stored",
    "output_audio_buffer.clear": "output_audio_buffer.clear is for WebRTC; this is a websocket",
}


def tokens_limit(value: int | str | None) -> int | None:
    return None if value in (None, "inf") else int(value)  # type: ignore[arg-type]
