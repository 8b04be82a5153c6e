"""Typed messages that cross the gateway <-> engine process boundary (Ray handles)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

OpenAIRoute = Literal["chat", "completions", "responses"]


@dataclass(frozen=True)
class OpenAICall:
    """An OpenAI-shaped request, already routed: `body["model"]` names the engine-side model."""

    route: OpenAIRoute
    body: dict[str, Any]
    adapter_id: str | None = None  # AdapterRef.model_id, None for the base model
    request_id: str = ""


@dataclass(frozen=True)
class ResponseHead:
    """First item of every engine answer: the status, and the whole body unless streaming.

    The gateway reads it before it commits to an HTTP status, so engine-side validation
    errors become real 4xx answers instead of an error inside a 200 stream.
    """

    status: int
    streaming: bool = False
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class EngineStats:
    running: int = 0
    adapters_loaded: list[str] = field(default_factory=list)
