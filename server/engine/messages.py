"""Typed messages that cross the gateway <-> engine process boundary (Ray handles)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

OpenAIRoute = Literal["chat", "completions", "responses"]
_LINE_BREAK = re.compile("\r\n|\r|\n")


def sse_event(data: str) -> str:
    """One server-sent event carrying `data`: each of its lines is a `data:` field, which an SSE
    parser joins with "\n", so no text (newlines, `data:` or a blank line in it) ends the event
    early or starts another. Only the kind of line break is lost (SSE cannot carry a CR)."""
    return "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data)) + "\n"


def sse_json(payload: Any) -> str:
    """An event whose data is `payload` as JSON (one line: JSON escapes every control character)."""
    return sse_event(json.dumps(payload))


SSE_DONE = sse_event("[DONE]")  # OpenAI's last event of a stream


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
