"""Generation through transformers, for checkpoints vLLM cannot run on this device.

`floe.quant` writes bitsandbytes (nf4 / fp4 / int8) checkpoints that vLLM does not run on a
CPU; their manifest names `engine: transformers`, and the LLMServer then uses this engine.
Requests are validated, and answers built, with vLLM's own OpenAI protocol models (the same
400s and the same shapes as the vLLM path; vLLM's serving layer itself needs a vLLM engine).
Generation is one request at a time, streamed token by token. Not supported here, with a
clear 400: logprobs, beam search, tools, the Responses API, and adapters.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from floe.server.engine.messages import SSE_DONE, EngineStats, OpenAICall, ResponseHead, sse_event
from floe.server.engine.vllm_engine import _error_head, parse_request
from floe.server.kinds import InvalidAdapter
from floe.server.registry import AdapterRef


class _TokenQueue:
    """A transformers streamer that hands new token ids to an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self._loop, self._queue, self._skip = loop, queue, 1  # the first put() is the prompt
        self.stop = threading.Event()

    def put(self, value) -> None:
        if self._skip:
            self._skip = 0
            return
        for token in value.reshape(-1).tolist():
            self._loop.call_soon_threadsafe(self._queue.put_nowait, token)

    def end(self) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, None)


class TransformersEngine:
    def __init__(self, model_dir: Path, served_name: str, max_model_len: int | None) -> None:
        self._dir, self._name, self._max_len = Path(model_dir), served_name, max_model_len
        self._lock = asyncio.Lock()
        self._running = 0

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        from transformers import AutoTokenizer

        from floe.quant import load_for_transformers

        self._tokenizer = AutoTokenizer.from_pretrained(self._dir)
        self._model = load_for_transformers(self._dir)
        self._max_len = self._max_len or getattr(self._model.config, "max_position_embeddings", 2048)

    # -- the OpenAI routes --------------------------------------------------------------
    async def openai(self, call: OpenAICall) -> AsyncIterator[ResponseHead | str]:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        if call.route == "responses":
            yield _error_head(400, "the Responses API needs the vLLM engine; this model runs on the "
                                   "transformers engine: use /v1/chat/completions")
            return
        wire = ChatCompletionRequest if call.route == "chat" else CompletionRequest
        req, refused = parse_request(wire, call.body)
        if refused:
            yield refused
            return
        unsupported = self._unsupported(req, call.route)
        if unsupported == "tools":
            yield _error_head(400, "tool calls need the vLLM engine (its tool-call parser and "
                                   "structured outputs); this model runs on the transformers "
                                   "engine: send the request without `tools`", "tools")
            return
        if unsupported:
            yield _error_head(400, f"`{unsupported}` is not supported by the transformers engine", unsupported)
            return
        if call.route == "chat":
            prompt_ids = self._tokenizer.apply_chat_template(
                [m if isinstance(m, dict) else dict(m) for m in call.body["messages"]],
                add_generation_prompt=True, tokenize=True)
            if hasattr(prompt_ids, "input_ids"):
                prompt_ids = prompt_ids["input_ids"]
        elif isinstance(req.prompt, str):
            prompt_ids = self._tokenizer(req.prompt).input_ids
        else:
            yield _error_head(400, "`prompt` must be one string on the transformers engine", "prompt")
            return
        max_tokens = req.max_completion_tokens if call.route == "chat" else None
        max_tokens = max_tokens or req.max_tokens or (self._max_len - len(prompt_ids))
        if len(prompt_ids) + max_tokens > self._max_len:
            yield _error_head(400, f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) "
                                   f"exceeds the context length {self._max_len}", "max_tokens")
            return
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        rid = f"{'chatcmpl' if call.route == 'chat' else 'cmpl'}-{call.request_id or uuid.uuid4().hex}"
        shape = _Shape(call.route, rid, call.body["model"])
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            yield ResponseHead(status=200, streaming=True)
            async for frame in self._stream(shape, req, prompt_ids, max_tokens, stops, include_usage):
                yield frame
            return
        text, n_out, finish = "", 0, "length"
        async for piece, count, reason in self._generate(req, prompt_ids, max_tokens, stops):
            text, n_out, finish = text + piece, count, reason or finish
        yield ResponseHead(status=200, body=shape.whole(text, finish, len(prompt_ids), n_out))

    @staticmethod
    def _unsupported(req, route: str) -> str | None:
        if (req.n or 1) != 1:
            return "n"
        if getattr(req, "logprobs", None) not in (None, False) or getattr(req, "top_logprobs", None):
            return "logprobs"
        if getattr(req, "use_beam_search", False):
            return "use_beam_search"
        if route == "chat" and getattr(req, "tools", None):
            return "tools"
        return None

    async def _stream(self, shape: _Shape, req, prompt_ids, max_tokens, stops,
                      include_usage: bool) -> AsyncIterator[str]:
        if shape.route == "chat":
            yield shape.frame({"role": "assistant", "content": ""}, None)
        n_out, finish = 0, "length"
        async for piece, count, reason in self._generate(req, prompt_ids, max_tokens, stops):
            n_out = count
            if piece:
                yield shape.frame({"content": piece} if shape.route == "chat" else piece, None)
            finish = reason or finish
        yield shape.frame({} if shape.route == "chat" else "", finish)
        if include_usage:
            yield shape.usage_frame(len(prompt_ids), n_out)
        yield SSE_DONE

    async def _generate(self, req, prompt_ids: list[int], max_tokens: int,
                        stops: list[str]) -> AsyncIterator[tuple[str, int, str | None]]:
        """(new text, tokens so far, finish reason or None), as tokens arrive."""
        import torch

        queue: asyncio.Queue = asyncio.Queue()
        streamer = _TokenQueue(asyncio.get_running_loop(), queue)
        greedy = not req.temperature
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_tokens, do_sample=not greedy, streamer=streamer,
            pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
            stopping_criteria=[lambda *_a, **_k: streamer.stop.is_set()],
        )
        if not greedy:
            kwargs.update(temperature=req.temperature, top_p=req.top_p if req.top_p is not None else 1.0)
        if getattr(req, "ignore_eos", False):
            kwargs["eos_token_id"] = None

        def run() -> None:
            if req.seed is not None:
                torch.manual_seed(req.seed)
            with torch.no_grad():
                self._model.generate(torch.tensor([prompt_ids]), **kwargs)

        async with self._lock:
            self._running += 1
            worker = asyncio.create_task(asyncio.to_thread(run))
            ids: list[int] = []
            sent = ""
            try:
                while (token := await queue.get()) is not None:
                    ids.append(token)
                    text = self._tokenizer.decode(ids, skip_special_tokens=True)
                    cut = min((text.find(s) for s in stops if s in text), default=-1)
                    if cut >= 0:
                        streamer.stop.set()
                        yield text[len(sent):cut], len(ids), "stop"
                        return
                    if token == self._tokenizer.eos_token_id and kwargs.get("eos_token_id", 0) is not None:
                        yield text[len(sent):], len(ids), "stop"
                        return
                    if not text.endswith("\ufffd"):  # wait for whole characters
                        yield text[len(sent):], len(ids), None
                        sent = text
                # flush what was held back waiting for a whole character
                tail = self._tokenizer.decode(ids, skip_special_tokens=True)[len(sent):]
                yield tail, len(ids), "length"
            finally:
                streamer.stop.set()
                await worker
                self._running -= 1

    # -- the rest of the Engine protocol ------------------------------------------------
    async def load_adapter(self, ref: AdapterRef, path: str) -> None:
        raise InvalidAdapter("this model runs on the transformers engine, which serves no adapters",
                             param="source")

    async def unload_adapter(self, model_id: str) -> None:
        return None

    async def stats(self) -> EngineStats:
        return EngineStats(running=self._running)

    def metrics_text(self) -> str:
        return ""

    async def shutdown(self) -> None:
        self._model = None


class _Shape:
    """vLLM's OpenAI response and chunk models for one request, serialised as vLLM does."""

    def __init__(self, route: str, rid: str, model: str) -> None:
        self.route, self.rid, self.model, self.created = route, rid, model, int(time.time())

    def _ids(self) -> dict[str, Any]:
        return {"id": self.rid, "created": self.created, "model": self.model}

    def whole(self, text: str, finish: str, prompt: int, out: int) -> dict[str, Any]:
        from vllm.entrypoints.openai.chat_completion.protocol import (
            ChatCompletionResponse,
            ChatCompletionResponseChoice,
            ChatMessage,
        )
        from vllm.entrypoints.openai.completion.protocol import CompletionResponse, CompletionResponseChoice

        usage = _usage(prompt, out)
        if self.route == "chat":
            choice = ChatCompletionResponseChoice(
                index=0, message=ChatMessage(role="assistant", content=text), finish_reason=finish)
            body = ChatCompletionResponse(**self._ids(), choices=[choice], usage=usage)
        else:
            body = CompletionResponse(**self._ids(), usage=usage, choices=[
                CompletionResponseChoice(index=0, text=text, finish_reason=finish)])
        return body.model_dump(mode="json")  # as vllm_engine.py answers

    def frame(self, delta: dict | str, finish: str | None) -> str:
        from vllm.entrypoints.generate.base.protocol import DeltaMessage
        from vllm.entrypoints.openai.chat_completion.protocol import (
            ChatCompletionResponseStreamChoice,
            ChatCompletionStreamResponse,
        )
        from vllm.entrypoints.openai.completion.protocol import CompletionResponseStreamChoice, CompletionStreamResponse

        if self.route == "chat":
            choice = ChatCompletionResponseStreamChoice(
                index=0, delta=DeltaMessage(**delta), logprobs=None, finish_reason=finish)
            chunk = ChatCompletionStreamResponse(**self._ids(), choices=[choice])
        else:
            chunk = CompletionStreamResponse(**self._ids(), choices=[CompletionResponseStreamChoice(
                index=0, text=delta, logprobs=None, finish_reason=finish)])
        # NOTE: exclude_unset, as vLLM's serving layer frames its chunks.
        return sse_event(chunk.model_dump_json(exclude_unset=True))

    def usage_frame(self, prompt: int, out: int) -> str:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionStreamResponse
        from vllm.entrypoints.openai.completion.protocol import CompletionStreamResponse

        wire = ChatCompletionStreamResponse if self.route == "chat" else CompletionStreamResponse
        chunk = wire(**self._ids(), choices=[], usage=_usage(prompt, out))
        return sse_event(chunk.model_dump_json(exclude_unset=True, exclude_none=True))


def _usage(prompt: int, out: int):
    from vllm.entrypoints.serve.engine.protocol import UsageInfo

    return UsageInfo(prompt_tokens=prompt, completion_tokens=out, total_tokens=prompt + out)
