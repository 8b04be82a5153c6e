"""The vLLM engine of an LLMServer replica, served through vLLM's own OpenAI layer.

vLLM's serving classes (chat templates, sampling parameters, tool and reasoning parsers,
structured output, SSE framing) are built exactly as `vllm serve` builds them, from the same
command-line arguments that `vllm_cli_args` derives from floe's config; the benchmark hands
the same arguments to vLLM's own server, so both run the same engine settings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import prometheus_client
from pydantic import BaseModel, ValidationError

from floe.server.config import LORA_LINEAR_MODULES, EngineConfig
from floe.server.engine.messages import EngineStats, OpenAICall, ResponseHead
from floe.server.kinds import InvalidAdapter
from floe.server.registry import AdapterRef

log = logging.getLogger("floe.engine.vllm")

TOOL_PARSER_PLUGIN = "floe.server.engine.tool_parsers"


def vllm_cli_args(engine: EngineConfig, model_dir: Path, served_name: str,
                  load_kwargs: dict[str, Any] | None = None) -> list[str]:
    """`vllm serve` arguments equivalent to floe's engine config (one source for both).

    `load_kwargs` come from a floe.quant manifest (e.g. `quantization`, and the `dtype` the
    checkpoint's kernels need); explicit config (`dtype` other than auto, `engine_args`) wins.
    """
    load_kwargs = dict(load_kwargs or {})
    dtype = engine.dtype if engine.dtype != "auto" else load_kwargs.pop("dtype", "auto")
    load_kwargs.pop("dtype", None)
    args = ["--model", str(model_dir), "--served-model-name", served_name,
            "--dtype", dtype, "--max-num-seqs", str(engine.max_num_seqs),
            "--seed", str(engine.seed), "--enable-lora", "--max-loras", str(engine.max_loras),
            "--max-lora-rank", str(engine.max_lora_rank)]
    if engine.tool_call_parser:
        # The OpenAI tools API is vLLM's: its parser turns the template's call markup into
        # `tool_calls`, and the strict level makes its structural tag hold the arguments to
        # the tool's schema. The plugin adds floe's parsers (`floe-hermes`) to vLLM's.
        args += ["--enable-auto-tool-choice", "--tool-call-parser", engine.tool_call_parser,
                 "--tool-parser-plugin", TOOL_PARSER_PLUGIN,
                 "--tool-strict-level", engine.tool_strict_level]
    lora_targets = engine.lora_target_modules
    if lora_targets is None and engine.enable_prompt_embeds:
        # NOTE: vLLM 0.32's model runner embeds only the token positions of a batch that also holds
        # prompt embeddings, while the LoRA embedding layer indexes every position: such a batch
        # with an active LoRA kills the engine core (gpu_model_runner._preprocess). Keeping
        # embed_tokens unwrapped avoids that path; tests/server/test_media.py mixes them.
        lora_targets = LORA_LINEAR_MODULES
    if lora_targets:
        args += ["--lora-target-modules", *lora_targets]
    options: dict[str, Any] = {
        "max_model_len": engine.max_model_len, "kv_cache_memory_bytes": engine.kv_cache_memory_bytes,
        "enforce_eager": engine.enforce_eager, "enable_prefix_caching": engine.enable_prefix_caching,
        "max_cpu_loras": engine.max_cpu_loras, "enable_prompt_embeds": engine.enable_prompt_embeds,
        **load_kwargs, **engine.engine_args,
    }
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (dict, list)):
            args += [flag, json.dumps(value)]
        else:
            args += [flag, str(value)]
    return args


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    return f"{param}: {first['msg']}" if param else first["msg"], param


def _error_head(status: int, message: str, param: str | None = None) -> ResponseHead:
    return ResponseHead(status=status, body={"error": {"message": message, "param": param}})


def _vllm_error_head(exc: Exception) -> ResponseHead:
    """An exception from vLLM's protocol or serving code, mapped as `vllm serve` maps it."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    error = create_error_response(exc).error
    return _error_head(error.code, error.message, error.param)


def parse_request(wire: type[BaseModel], body: dict[str, Any]) -> tuple[Any, ResponseHead | None]:
    """(the request as vLLM's wire model, None), or (None, the 400 that refuses it)."""
    try:
        return wire.model_validate(body), None
    except ValidationError as exc:
        return None, _error_head(400, *_validation_message(exc))
    except Exception as exc:  # vLLM's model validators also raise VLLMValidationError
        return None, _vllm_error_head(exc)


def _check_tool_schemas(parsed: BaseModel) -> ResponseHead | None:
    """400 for a function tool whose `parameters` is not a JSON Schema, as OpenAI answers.

    vLLM would accept the request and fail later, compiling the call grammar, with a message
    that names no tool.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    for i, tool in enumerate(getattr(parsed, "tools", None) or ()):
        nested = getattr(tool, "function", None)  # chat: {"type", "function": {...}}
        function = nested or tool  # responses: the function fields sit on the tool
        schema = getattr(function, "parameters", None)
        if schema is None:
            continue
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            param = f"tools.{i}.function.parameters" if nested else f"tools.{i}.parameters"
            return _error_head(400, f"tool `{getattr(function, 'name', '')}`: `parameters` is not a "
                                    f"valid JSON Schema: {exc.message}", param)
    return None


def _refuse_stored_state(body: dict[str, Any]) -> ResponseHead | None:
    """400 for Responses features that need stored responses, which floe does not keep.

    vLLM keeps them only in one replica's memory, unbounded, behind an opt-in variable, and a
    later GET could reach another replica; so floe stores nothing and says so when asked to,
    instead of vLLM's silently ignoring `store: true`. A request that leaves `store` out is
    served unstored.
    """
    if body.get("store") is True:
        return _error_head(400, "floe does not store responses: send `store: false` (or leave it "
                                "out) and keep the conversation on the client", "store")
    if body.get("previous_response_id") is not None:
        return _error_head(400, "`previous_response_id` needs stored responses, which floe does "
                                "not keep: send the earlier turns in `input` instead",
                           "previous_response_id")
    return None


class VLLMEngine:
    """AsyncLLM plus vLLM's OpenAI serving objects, for one replica."""

    def __init__(self, engine: EngineConfig, model_dir: Path, served_name: str,
                 load_kwargs: dict[str, Any] | None = None) -> None:
        self._cli = vllm_cli_args(engine, model_dir, served_name, load_kwargs)
        self._engine = None
        self._state = None

    async def start(self) -> None:
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
        from vllm.usage.usage_lib import UsageContext
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        from vllm.v1.engine.async_llm import AsyncLLM

        args = make_arg_parser(FlexibleArgumentParser()).parse_args(self._cli)
        validate_parsed_serve_args(args)
        if args.tool_parser_plugin:  # as `vllm serve` does before it builds its serving layer
            from vllm.tool_parsers import ToolParserManager

            ToolParserManager.import_tool_parser(args.tool_parser_plugin)
        engine_args = AsyncEngineArgs.from_cli_args(args)
        usage = UsageContext.OPENAI_API_SERVER
        self._engine = AsyncLLM.from_vllm_config(
            vllm_config=engine_args.create_engine_config(usage_context=usage),
            usage_context=usage, enable_log_requests=engine_args.enable_log_requests,
            disable_log_stats=engine_args.disable_log_stats,
        )
        self._state = State()
        tasks = await self._engine.get_supported_tasks()
        await init_app_state(self._engine, self._state, args, tasks)
        log.info("vLLM engine ready: %s", " ".join(self._cli))

    async def openai(self, request: OpenAICall) -> AsyncIterator[ResponseHead | str]:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        wire, create = self._route(request.route)
        parsed, refused = parse_request(wire, request.body)
        refused = refused or _check_tool_schemas(parsed) or (
            _refuse_stored_state(request.body) if request.route == "responses" else None)
        if refused:
            yield refused
            return
        if request.request_id:
            # NOTE: vLLM prefixes chat and completion ids itself; Responses ids carry OpenAI's `resp_`.
            parsed.request_id = ("resp_" if request.route == "responses" else "") + request.request_id
        try:
            result = await create(parsed, None)
        except Exception as exc:  # vLLM validates sampling options by raising; map like `vllm serve`
            yield _vllm_error_head(exc)
            return
        if isinstance(result, ErrorResponse):
            yield _error_head(result.error.code, result.error.message, result.error.param)
        elif isinstance(result, BaseModel):
            # by_alias: the Responses models rename fields on the wire (as vLLM's router dumps).
            yield ResponseHead(status=200, body=result.model_dump(mode="json", by_alias=True))
        else:
            yield ResponseHead(status=200, streaming=True)
            if request.route == "responses":  # event objects: frame them as vLLM's router does
                from vllm.entrypoints.openai.responses.api_router import _convert_stream_to_sse_events

                result = _convert_stream_to_sse_events(result)
            async for chunk in result:
                yield chunk

    def _route(self, route: str) -> tuple[type[BaseModel], Any]:
        """The wire model and the vLLM serving call of an OpenAI route."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

        if route == "chat":
            return ChatCompletionRequest, self._state.openai_serving_chat.create_chat_completion
        if route == "completions":
            return CompletionRequest, self._state.openai_serving_completion.create_completion
        return ResponsesRequest, self._state.openai_serving_responses.create_responses

    async def load_adapter(self, ref: AdapterRef, path: str) -> None:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        models = self._state.openai_serving_models
        if ref.model_id in models.lora_requests:
            return
        result = await models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=ref.model_id, lora_path=path))
        if isinstance(result, ErrorResponse):
            raise InvalidAdapter(f"the engine rejected adapter {ref.name!r}: {result.error.message}",
                                 param="source")

    async def unload_adapter(self, model_id: str) -> None:
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        if self._engine is None:  # shut down already
            return
        models = self._state.openai_serving_models
        lora = models.lora_requests.get(model_id)
        if lora is None:
            return
        await models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=model_id))
        await self._engine.remove_lora(lora.lora_int_id)

    async def stats(self) -> EngineStats:
        states = self._engine.output_processor.request_states
        return EngineStats(running=len(states),
                           adapters_loaded=sorted(self._state.openai_serving_models.lora_requests))

    def metrics_text(self) -> str:
        return prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()

    async def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
