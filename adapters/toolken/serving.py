"""A toolken adapter's chat request in two engine calls, both through vLLM's OpenAI layer.

1. Tool selection, on the adapter's LoRA: the client's request with its `tools` taken out (the
   adapter holds them), the ids of the tools that may fire as `stop_token_ids`, the others (and
   unused spare ids) at logit_bias -100, each allowed tool's bias at its id. `"required"`
   allows only the tool ids (`allowed_token_ids`), `"none"` bans them all, a named tool skips
   this call. vLLM answers text as usual; a stop on a tool id (`stop_reason`, an int) is the
   tool token firing.
2. Argument mode, on the base (tool tokens off, as in ToolkenGPT): the same conversation with that
   one tool and vLLM's named `tool_choice`, so its structural tag holds the arguments to the
   tool's schema and its parser writes the call. The answer is the first call's text (if any)
   plus the second's `tool_calls`, `finish_reason: "tool_calls"`, the usage of both; streamed,
   the text deltas come first and the call's deltas follow in the same stream.

One tool call per answer (the client runs it and sends a `tool` turn, then generation resumes
with the result in the context, ToolkenGPT's loop); `n` must be 1.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from floe.adapters.toolken import LoadedToolken
from floe.server.engine.messages import SSE_DONE, OpenAICall, ResponseHead, sse_json
from floe.server.errors import InvalidRequest

BAN = -100.0  # vLLM's (and OpenAI's) lowest logit_bias
# what the client asked that applies to the first call only (or that argument mode sets itself)
_FIRST_CALL_ONLY = ("tools", "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs", "logit_bias",
                    "stop", "stop_token_ids", "allowed_token_ids", "bad_words", "response_format",
                    "structured_outputs", "logprob_token_ids", "n")

Frames = AsyncIterator[ResponseHead | str]


@dataclass(frozen=True)
class ToolkenCall(OpenAICall):
    """The first engine call, and what the answer hook needs to finish the request."""

    allowed: tuple[int, ...] = ()  # rows (tool indices) that may fire
    named: int | None = None  # tool_choice names this row: argument mode straight away
    listed: dict[int, dict[str, Any]] = field(default_factory=dict)  # row -> the request's definition
    original: dict[str, Any] = field(default_factory=dict)  # the client's body


# -- the request -----------------------------------------------------------------------------

def _listed_tools(loaded: LoadedToolken, tools: Any) -> dict[int, dict[str, Any]]:
    if not isinstance(tools, list) or not tools:
        raise InvalidRequest("`tools` must be a non-empty list of function tools (or left out: then every "
                             "tool of the adapter may be called)", param="tools")
    listed: dict[int, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or (isinstance(tool, dict) and tool.get("type", "function") != "function"):
            raise InvalidRequest(f'tools[{i}] must be {{"type": "function", "function": {{"name": ...}}}}',
                                 param=f"tools.{i}.function")
        if name not in loaded.by_name:
            known = ", ".join(sorted(loaded.by_name)[:20])
            raise InvalidRequest(f"tool {name!r} is not one of this adapter's tool tokens ({known}"
                                 f"{', ...' if len(loaded.by_name) > 20 else ''})", param=f"tools.{i}.function.name")
        listed[loaded.by_name[name]] = {"type": "function", "function": function}
    return listed


def _choice(loaded: LoadedToolken, tool_choice: Any, allowed: tuple[int, ...]) -> tuple[str, int | None]:
    """("auto" | "none" | "required" | "named", the named row)."""
    if tool_choice is None or tool_choice in ("auto", "none", "required"):
        return tool_choice or "auto", None
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise InvalidRequest('tool_choice must be "none", "auto", "required" or {"type": "function", '
                             '"function": {"name": ...}}', param="tool_choice")
    row = loaded.by_name.get(name)
    if row is None or row not in allowed:
        raise InvalidRequest(f"tool_choice names {name!r}, which is not a tool this request may call",
                             param="tool_choice")
    return "named", row


def plan_request(loaded: LoadedToolken, call: OpenAICall) -> OpenAICall:
    """The first engine call of a chat request on a toolken adapter (400 on bad tool options)."""
    if call.route != "chat":
        return call
    original = call.body
    if (original.get("n") or 1) != 1:
        raise InvalidRequest("toolken adapters answer one choice per request (n = 1)", param="n")
    listed = _listed_tools(loaded, original["tools"]) if original.get("tools") is not None else {}
    allowed = tuple(sorted(listed)) if listed else tuple(range(len(loaded.tools)))
    mode, named = _choice(loaded, original.get("tool_choice"), allowed)
    if mode == "none":
        allowed = ()
    body = {k: v for k, v in original.items() if k not in ("tools", "tool_choice", "parallel_tool_calls")}
    bias = dict(original.get("logit_bias") or {})
    allowed_ids = {loaded.token_ids[row] for row in allowed}
    for token in loaded.spare_ids:
        if token not in allowed_ids:
            bias[str(token)] = BAN
    for row in allowed:
        if loaded.bias[row]:
            bias[str(loaded.token_ids[row])] = loaded.bias[row]
    if bias:
        body["logit_bias"] = bias
    body["stop_token_ids"] = [*(original.get("stop_token_ids") or []), *sorted(allowed_ids)]
    if mode == "required":
        body["allowed_token_ids"] = sorted(allowed_ids)
    fields = {f.name: getattr(call, f.name) for f in dataclasses.fields(OpenAICall)}
    return ToolkenCall(**{**fields, "body": body}, allowed=allowed, named=named, listed=listed, original=original)


def arguments_call(loaded: LoadedToolken, call: ToolkenCall, row: int, used_tokens: int) -> OpenAICall:
    """Argument mode: the conversation, that one tool, vLLM's named tool_choice, on the base."""
    body = {k: v for k, v in call.original.items() if k not in _FIRST_CALL_ONLY}
    for key in ("max_completion_tokens", "max_tokens"):
        if isinstance(body.get(key), int):
            body[key] = max(1, body[key] - used_tokens)
    tool = call.listed.get(row) or loaded.tools[row]
    body.update(model=loaded.served_name, tools=[tool], parallel_tool_calls=False,
                tool_choice={"type": "function", "function": {"name": tool["function"]["name"]}})
    return OpenAICall("chat", body, None, f"{call.request_id}-args" if call.request_id else "")


# -- the answer ------------------------------------------------------------------------------

def fired(loaded: LoadedToolken, call: ToolkenCall, choice: dict[str, Any]) -> int | None:
    """The row whose tool token ended this choice, if one did."""
    reason = choice.get("stop_reason")
    if choice.get("finish_reason") != "stop" or not isinstance(reason, int) or isinstance(reason, bool):
        return None
    row = loaded.by_id.get(reason)
    return row if row in call.allowed else None


def _usage(*parts: dict[str, Any] | None) -> dict[str, Any] | None:
    present = [p for p in parts if p]
    if not present:
        return None
    prompt = sum(p.get("prompt_tokens") or 0 for p in present)
    completion = sum(p.get("completion_tokens") or 0 for p in present)
    return {**present[-1], "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}



def _event(item: str) -> dict[str, Any] | None:
    """The JSON object of one SSE frame; None for `[DONE]` (or anything that is not one)."""
    data = item.strip()
    if not data.startswith("data:"):
        return None
    data = data[5:].strip()
    return None if data == "[DONE]" else json.loads(data)


async def answer(loaded: LoadedToolken, call: OpenAICall, frames: Frames) -> Frames:
    if not isinstance(call, ToolkenCall):
        async for item in frames:
            yield item
        return
    if call.named is not None:  # no selection to run: the named tool's arguments are the answer
        await frames.aclose()
        async for item in _named(loaded, call):
            yield item
        return
    head = await anext(frames)
    if not isinstance(head, ResponseHead) or head.status != 200:
        yield head
        return
    if head.streaming:
        async for item in _streamed(loaded, call, head, frames):
            yield item
        return
    assert head.body is not None
    choice = head.body["choices"][0]
    row = fired(loaded, call, choice)
    if row is None:
        yield head
        return
    used = (head.body.get("usage") or {}).get("completion_tokens") or 0
    args = await anext(loaded.engine.openai(arguments_call(loaded, call, row, used)))
    yield args if args.status != 200 else ResponseHead(200, body=_merged(head.body, args.body))


def _merged(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The first call's text + the argument call's `tool_calls`, as one chat completion."""
    c1, c2 = first["choices"][0], second["choices"][0]
    calls = c2["message"].get("tool_calls") or []
    text = c1["message"].get("content") or ""
    if not calls:  # the call did not close (max_tokens): say what came back, as vLLM does
        text += c2["message"].get("content") or ""
    message = {**c1["message"], "content": text or None, "tool_calls": calls}
    finish = "tool_calls" if calls and c2.get("finish_reason") == "stop" else c2.get("finish_reason")
    choice = {**c1, "message": message, "finish_reason": finish, "stop_reason": None}
    return {**first, "choices": [choice], "usage": _usage(first.get("usage"), second.get("usage"))}


async def _named(loaded: LoadedToolken, call: ToolkenCall) -> Frames:
    """Named tool_choice: vLLM's named-call answer, under the adapter's name."""
    model = call.body.get("model")
    frames = loaded.engine.openai(arguments_call(loaded, call, call.named or 0, 0))
    async for item in frames:
        if isinstance(item, ResponseHead):
            if item.body is not None and item.status == 200:
                item = dataclasses.replace(item, body={**item.body, "model": model})
            yield item
            continue
        event = _event(item)
        yield item if event is None or "error" in event else sse_json({**event, "model": model})


async def _streamed(loaded: LoadedToolken, call: ToolkenCall, head: ResponseHead, frames: Frames) -> Frames:
    """Stream the first call's text; when a tool token ends it, stream the call's deltas after it."""
    yield head
    row, usage, meta, used = None, None, {}, 0
    async for item in frames:
        assert isinstance(item, str)
        event = _event(item)
        if event is None or "error" in event:
            if row is None:
                yield item
            continue
        meta = {k: event[k] for k in ("id", "created", "model") if k in event}
        choices = event.get("choices") or []
        if row is None and choices and (hit := fired(loaded, call, choices[0])) is not None:
            row = hit
            if (choices[0].get("delta") or {}).get("content"):  # text that came with the stop
                yield sse_json({**event, "choices": [{**choices[0], "finish_reason": None, "stop_reason": None}]})
            usage = event.get("usage") or usage
            continue
        if row is not None:  # after the tool token: the usage chunk, kept for the sum
            usage = event.get("usage") or usage
            continue
        yield item
    if row is None:
        return
    used = (usage or {}).get("completion_tokens") or 0
    async for item in _streamed_arguments(loaded, arguments_call(loaded, call, row, used), meta, usage):
        yield item


async def _streamed_arguments(loaded: LoadedToolken, args: OpenAICall, meta: dict[str, Any],
                              first_usage: dict[str, Any] | None) -> Frames:
    frames = loaded.engine.openai(args)
    head = await anext(frames)
    if not isinstance(head, ResponseHead) or head.status != 200:  # the stream is open: an error event
        error = (head.body or {}).get("error") if isinstance(head, ResponseHead) else None
        yield sse_json({"error": {"message": "argument mode failed", "type": "BadRequestError", "code": 400,
                                **(error or {})}})
        yield SSE_DONE
        return
    async for item in frames:
        assert isinstance(item, str)
        event = _event(item)
        if event is None or "error" in event:
            yield item
            continue
        event = {**event, **meta}
        choices = []
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            if not delta.get("tool_calls") and not delta.get("content") and choice.get("finish_reason") is None:
                continue  # the role chunk: the first call's stream opened the message already
            if choice.get("finish_reason") == "stop":
                choice = {**choice, "finish_reason": "tool_calls", "stop_reason": None}
            choices.append(choice)
        if event.get("choices") and not choices:
            continue
        if event.get("usage"):
            event["usage"] = _usage(first_usage, event["usage"])
        yield sse_json({**event, "choices": choices})
