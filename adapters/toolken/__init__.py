"""The `toolken` kind: ToolkenGPT tool tokens (docs/methods.md, "ToolkenGPT"; docs/toolkens.md).

Each tool is one embedding row e_k; at every step the frozen LLM's logits are
`concat(lm_head(h), h @ E^T)` (h: the last hidden state after the final norm). When a tool token
is chosen, generation switches to argument mode: the tool's JSON schema constrains its
arguments, and the answer carries OpenAI `tool_calls` with `finish_reason: "tool_calls"`. The
request need not list the tools (the adapter holds them, so thousands stay out of the context);
if it lists some, only those may fire.

Serving on vLLM (PLATFORM_NOTES, "the lm_head LoRA trick"): the base checkpoint has spare
vocabulary rows (ids len(tokenizer) .. vocab_size - 1, which no text encodes to). `load` writes
a PEFT LoRA on `lm_head` whose update puts e_k at spare id s_k, exactly:

    delta W = B @ A (alpha = r, so no scale), rows s_k of W + delta W = e_k, all other rows unchanged
    K <= d:  A = E - W[s] [K, d], B = one-hot [V, K] (B[s_k, k] = 1)          rank K
    K >  d:  A = I_d [d, d],      B[s_k] = e_k - W[s_k], other rows 0 [V, d]   rank d

so any number of tools up to the spare rows fits one LoRA of rank min(K, d) <= max_lora_rank,
and hot swap, the LRU and mixed batches work as for any LoRA. vLLM's own machinery does the
rest (`serving.py`): the tool ids are stop tokens of the first engine call (the stop reason
names the id: spare ids decode to empty text, so they are detected by id, never by text), tools
a request excludes get logit_bias -100 (OpenAI's and vLLM's bound, a ban in practice), and the
argument call is vLLM's named `tool_choice` on the base (tool tokens off), whose structural tag
holds the arguments to the schema and whose parser makes the `tool_calls`.

Bias. ToolkenGPT's head has none (`nn.Linear(dim, n_tools, bias=False)` in the authors' code);
its inference adds one scalar `logits_bias` to every tool logit. Both that scalar
(`config.logits_bias`) and an optional per-tool `bias` [K] are served exactly as vLLM's
per-request `logit_bias` at the tool ids, which vLLM adds to the logits before sampling (greedy
too). Returned logprobs are vLLM's raw logprobs, before any bias: they show h . e_k. The trainer
fits E only.

An adapter directory:

    floe_adapter.json     {"kind": "toolken", "base_model": <base fingerprint>, "version",
                           "config": {"logits_bias": 0.0}, "training": {...}}
    toolken.safetensors   "embedding" [K, d] float32 (+ optional "bias" [K])
    tools.json            {"tools": [K OpenAI function tools, {"type": "function", "function":
                           {"name", "description", "parameters"}}]}, row k is tool k

This module is torch-free (manifest, the request plan); `serving.py` rewrites requests and
answers (pure Python), `lora.py` builds the LoRA, `train.py` / `cli.py` train, `demo.py` is the
built-in demo.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from floe.server.kinds import (
    MANIFEST,
    AdapterInfo,
    EngineLimits,
    InvalidAdapter,
    LLMKind,
    register_kind,
    safetensors_shapes,
)

KIND = "toolken"
WEIGHTS = "toolken.safetensors"
TOOLS = "tools.json"
MAX_BIAS = 100.0  # vLLM clamps logit_bias to [-100, 100]
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names


def lora_rank(n_tools: int, width: int) -> int:
    """The rank of the LoRA that places `n_tools` rows of width `width` (see the module doc)."""
    return min(n_tools, width)


def parse_tools(data: dict[str, Any] | None) -> list[dict[str, Any]]:
    """tools.json -> its list of OpenAI function tools (400 when malformed)."""
    tools = (data or {}).get("tools")
    if not isinstance(tools, list) or not tools:
        raise InvalidAdapter(f'{TOOLS} must be {{"tools": [OpenAI function tools]}} with at least one tool',
                             param="source")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise InvalidAdapter(f'{TOOLS}: tools[{i}] must be {{"type": "function", "function": {{...}}}}',
                                 param="source")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidAdapter(f"{TOOLS}: tools[{i}].function.name must be 1-64 letters, digits, _ or -",
                                 param="source")
        if name in names:
            raise InvalidAdapter(f"{TOOLS}: tool {name!r} is defined twice", param="source")
        names.add(name)
        schema = function.get("parameters")
        if schema is not None:
            check_schema(schema, f"{TOOLS}: tool {name!r}")
    return tools


def check_schema(schema: Any, where: str) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if not isinstance(schema, dict):
        raise InvalidAdapter(f"{where}: `parameters` must be a JSON Schema object", param="source")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidAdapter(f"{where}: `parameters` is not a valid JSON Schema: {exc.message}",
                             param="source") from exc


@dataclass
class LoadedToolken:
    """A toolken adapter in this replica: its LoRA is in vLLM under `model_id`."""

    model_id: str
    served_name: str  # the base's vLLM name: argument mode runs there (tool tokens off)
    engine: Any  # server/engine/protocol.py's Engine
    tools: list[dict[str, Any]]  # row k -> tool k's OpenAI definition
    token_ids: list[int]  # row k -> its vocabulary id
    spare_ids: list[int]  # every spare id of the base (tool ids first)
    bias: list[float]  # per tool, added as logit_bias (config.logits_bias included)
    scratch: Path  # the PEFT LoRA directory vLLM reads
    by_name: dict[str, int] = field(init=False)
    by_id: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.by_name = {t["function"]["name"]: k for k, t in enumerate(self.tools)}
        self.by_id = {tid: k for k, tid in enumerate(self.token_ids)}


@register_kind
class ToolkenKind(LLMKind):
    name = KIND
    serves = ("chat",)
    trainer = "floe.adapters.toolken.cli:train_toolken"
    demo = "floe.adapters.toolken.demo:build"

    files = (WEIGHTS, TOOLS)

    def describe(self, directory: Path, manifest: dict[str, Any], cfg: None,
                 limits: EngineLimits) -> AdapterInfo:
        tools = parse_tools(self.read_json(directory, TOOLS))
        shapes = safetensors_shapes(directory / WEIGHTS)
        embedding = shapes.get("embedding")
        if not embedding or len(embedding) != 2 or embedding[0] != len(tools) or embedding[1] <= 0:
            raise InvalidAdapter(f"{WEIGHTS}: `embedding` must be [n_tools, d] with one row per tool of "
                                 f"{TOOLS} ({len(tools)}), got {embedding}", param="source")
        if "bias" in shapes and shapes["bias"] != [len(tools)]:
            raise InvalidAdapter(f"{WEIGHTS}: `bias` must be [{len(tools)}], got {shapes['bias']}", param="source")
        config = manifest.get("config") or {}
        scalar = config.get("logits_bias", 0.0) if isinstance(config, dict) else None
        if not isinstance(scalar, int | float) or isinstance(scalar, bool) or abs(scalar) > MAX_BIAS:
            raise InvalidAdapter(f"{MANIFEST}: config.logits_bias must be a number in [-100, 100]", param="source")
        n_tools, width = embedding
        rank = lora_rank(n_tools, width)
        if rank > limits.max_lora_rank:
            raise InvalidAdapter(
                f"{n_tools} tool tokens of width {width} need an lm_head LoRA of rank {rank}, over the engine's "
                f"max_lora_rank {limits.max_lora_rank} (raise engine.max_lora_rank, up to 512)", param="source")
        names = [t["function"]["name"] for t in tools]
        return self.info(manifest, tools=len(tools), tool_names=names[:64], width=width, lora_rank=rank,
                         logits_bias=float(scalar), has_bias="bias" in shapes, training=manifest.get("training"))

    # -- execution (LLMServer replica) ------------------------------------------------------------
    async def load(self, directory: Path, backbone: Any, ref: Any) -> LoadedToolken:
        """Check the adapter against the base, write its lm_head LoRA, load that into vLLM."""
        from floe.adapters.toolken.lora import prepare

        placed = await asyncio.to_thread(prepare, Path(directory), backbone.model_dir)
        try:
            await backbone.engine.load_adapter(ref, str(placed.scratch))
        except BaseException:
            shutil.rmtree(placed.scratch, ignore_errors=True)
            raise
        return LoadedToolken(model_id=ref.model_id, served_name=backbone.served_name, engine=backbone.engine,
                             tools=placed.tools, token_ids=placed.token_ids, spare_ids=placed.spare_ids,
                             bias=placed.bias, scratch=placed.scratch)

    async def unload(self, loaded: LoadedToolken, backbone: Any, ref: Any) -> None:
        await backbone.engine.unload_adapter(ref.model_id)
        shutil.rmtree(loaded.scratch, ignore_errors=True)

    async def rewrite_request(self, loaded: LoadedToolken, call: Any) -> Any:
        from floe.adapters.toolken.serving import plan_request

        return plan_request(loaded, call)

    def rewrite_response(self, loaded: LoadedToolken, call: Any, frames: Any) -> Any:
        from floe.adapters.toolken.serving import answer

        return answer(loaded, call, frames)
