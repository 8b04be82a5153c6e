"""The OpenAI tools API and the Responses API with the official `openai` client, on the real server.

The built-in model has random weights, so what it says is noise; what these tests hold is the
mechanism: vLLM's structural tag pins the function and holds the arguments to the tool's JSON
schema (floe serves every tool as strict), the hermes parser turns the markup into
`tool_calls`, and streamed deltas add up to the same call. The schemas bound every value (enum,
range, maxLength) because a random model never closes an unbounded string on its own.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import openai
import pytest

from floe.server.config import EngineConfig
from floe.server.engine.messages import OpenAICall
from floe.server.engine.vllm_engine import TOOL_PARSER_PLUGIN, vllm_cli_args
from tests.server.live import make_adapter

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "metric": {"type": "boolean"},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
CLOCK = {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 6}},
         "required": ["tz"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time",
                                      "parameters": CLOCK}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}
ASK = [{"role": "user", "content": "What is the weather in Paris this week?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
MAX_TOKENS = 200  # a call is ~60 tokens of the tiny tokenizer; room for the closing tag


def _valid(name: str, arguments: str) -> dict:
    assert name in SCHEMAS, name
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args


def _create(client, **kwargs):
    kwargs = {"model": "tiny", "messages": ASK, "tools": TOOLS, "max_tokens": MAX_TOKENS,
              "temperature": 0, **kwargs}
    return client.chat.completions.create(**kwargs)


def _streamed_calls(client, **kwargs) -> tuple[list[tuple[str, str]], str | None]:
    """(name, arguments) per call index, assembled from the deltas; and the finish reason."""
    names: dict[int, str] = {}
    args: dict[int, str] = {}
    finish = None
    for chunk in _create(client, stream=True, **kwargs):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        for delta in choice.delta.tool_calls or []:
            if delta.function and delta.function.name:
                names[delta.index] = delta.function.name
            if delta.function and delta.function.arguments:
                args[delta.index] = args.get(delta.index, "") + delta.function.arguments
        finish = choice.finish_reason or finish
    return [(names[i], args.get(i, "")) for i in sorted(names)], finish


# -- engine set-up, without a server -------------------------------------------------------

def test_the_engine_runs_vllm_tool_calling_with_the_same_flags_as_vllm_serve():
    args = vllm_cli_args(EngineConfig(), Path("/m"), "m")
    flag = lambda name: args[args.index(name) + 1]  # noqa: E731
    assert "--enable-auto-tool-choice" in args
    assert flag("--tool-call-parser") == "floe-hermes"
    assert flag("--tool-parser-plugin") == TOOL_PARSER_PLUGIN
    assert flag("--tool-strict-level") == "parameter"
    qwen = vllm_cli_args(EngineConfig(tool_call_parser="hermes", tool_strict_level="auto"), Path("/m"), "m")
    assert qwen[qwen.index("--tool-call-parser") + 1] == "hermes"
    assert qwen[qwen.index("--tool-strict-level") + 1] == "auto"
    assert "--enable-auto-tool-choice" not in vllm_cli_args(EngineConfig(tool_call_parser=None), Path("/m"), "m")


def test_floe_hermes_holds_arguments_to_the_schema_with_compact_whitespace(tiny_dir):
    import xgrammar
    from transformers import AutoTokenizer
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tool_parsers import ToolParserManager
    from vllm.tool_parsers.tool_strict_level import ToolStrictLevel
    from xgrammar.structural_tag import JSONSchemaFormat

    ToolParserManager.import_tool_parser(TOOL_PARSER_PLUGIN)
    parser = ToolParserManager.get_tool_parser("floe-hermes")(AutoTokenizer.from_pretrained(tiny_dir))
    request = ChatCompletionRequest(model="m", messages=ASK, tools=TOOLS, tool_choice="required")
    tag = parser.get_structural_tag(request, strict_level=ToolStrictLevel.PARAMETER)
    parts: list[JSONSchemaFormat] = []

    def collect(node):
        if isinstance(node, JSONSchemaFormat):
            parts.append(node)
        elif hasattr(type(node), "model_fields"):
            for name in type(node).model_fields:
                collect(getattr(node, name))
        elif isinstance(node, (list, tuple)):
            for item in node:
                collect(item)

    collect(tag.format)
    assert parts and {p.max_whitespace_cnt for p in parts} == {1}
    assert {json.dumps(p.json_schema, sort_keys=True) for p in parts} == \
        {json.dumps(s, sort_keys=True) for s in (WEATHER, CLOCK)}
    grammar = str(xgrammar.Grammar.from_structural_tag(json.dumps(tag.model_dump())))
    assert "[ \\n\\r\\t]*" not in grammar  # no unbounded whitespace run left


def test_the_transformers_engine_refuses_tools_and_responses_clearly(tiny_dir):
    from floe.server.engine.transformers_engine import TransformersEngine

    engine = TransformersEngine(tiny_dir, "q", 512)  # refused before generation: no start()

    def head(route, body):
        async def first():
            return [item async for item in engine.openai(OpenAICall(route, {"model": "q", **body}))][0]
        return asyncio.run(first())

    tools = head("chat", {"messages": ASK, "tools": TOOLS})
    assert tools.status == 400 and tools.body["error"]["param"] == "tools"
    assert "vLLM engine" in tools.body["error"]["message"]
    responses = head("responses", {"input": "Hello"})
    assert responses.status == 400 and "Responses API" in responses.body["error"]["message"]


# -- tool_choice ---------------------------------------------------------------------------

def test_named_tool_choice_calls_that_function_with_schema_valid_arguments(openai_client):
    reply = _create(openai_client, tool_choice=NAMED)
    message = reply.choices[0].message
    assert [c.function.name for c in message.tool_calls] == ["get_weather"]
    call = message.tool_calls[0]
    assert call.type == "function" and call.id
    _valid(call.function.name, call.function.arguments)

    streamed, finish = _streamed_calls(openai_client, tool_choice=NAMED)
    assert [name for name, _ in streamed] == ["get_weather"]
    # greedy: the streamed deltas add up to the same call as the whole answer
    assert _valid(*streamed[0]) == json.loads(call.function.arguments)
    assert finish == reply.choices[0].finish_reason


@pytest.mark.parametrize("parallel", [False, True])
def test_required_tool_choice_gives_schema_valid_calls(openai_client, parallel):
    reply = _create(openai_client, tool_choice="required", parallel_tool_calls=parallel)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and (parallel or len(calls) == 1)
    for call in calls:
        _valid(call.function.name, call.function.arguments)

    streamed, finish = _streamed_calls(openai_client, tool_choice="required", parallel_tool_calls=parallel)
    assert finish == "tool_calls"
    assert [(n, json.loads(a)) for n, a in streamed] == \
        [(c.function.name, json.loads(c.function.arguments)) for c in calls]


def test_auto_and_none_answer_as_openai_documents(openai_client):
    auto = _create(openai_client, tool_choice="auto", max_tokens=16).choices[0]
    # auto: the model decides; any call it makes is to a listed tool with valid arguments
    for call in auto.message.tool_calls or []:
        _valid(call.function.name, call.function.arguments)
    if not auto.message.tool_calls:
        assert isinstance(auto.message.content, str) and auto.finish_reason in ("stop", "length")

    none = _create(openai_client, tool_choice="none", max_tokens=16).choices[0]
    assert not none.message.tool_calls
    assert isinstance(none.message.content, str) and none.message.content


def test_a_tool_result_turn_is_answered(openai_client):
    call = _create(openai_client, tool_choice=NAMED).choices[0].message.tool_calls[0]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"forecast": "sunny"})},
    ]
    reply = _create(openai_client, messages=history, tool_choice="none", max_tokens=8)
    assert reply.choices[0].message.content
    # the call and its result are in the prompt: it is longer than the question alone
    assert reply.usage.prompt_tokens > _create(openai_client, tool_choice="none", max_tokens=1).usage.prompt_tokens


@pytest.mark.parametrize("tools, tool_choice, param", [
    ([{"type": "function", "function": {"name": "x", "parameters": "not a schema"}}], None,
     "tools.0.function.parameters"),
    ([{"type": "function"}], None, "tools.0.function"),
    ([{"type": "function", "function": {"name": "x", "parameters": {"type": "bogus"}}}], "required",
     "tools.0.function.parameters"),
    (TOOLS, {"type": "function", "function": {"name": "no_such_tool"}}, "tool_choice"),
])
def test_malformed_tool_definitions_are_400(openai_client, tools, tool_choice, param):
    kwargs = {"tool_choice": tool_choice} if tool_choice else {}
    with pytest.raises(openai.BadRequestError) as err:
        _create(openai_client, tools=tools, **kwargs)
    assert err.value.body["param"] == param, err.value.body


def test_tool_calls_on_a_lora_adapter(openai_client, admin, live_server):
    source = make_adapter(live_server.adapter_root, "tool-bot", live_server.model_dir, seed=51)
    assert admin.post("/v1/adapters", json={"name": "tool-bot", "source": str(source)}).status_code == 201
    reply = _create(openai_client, model="tool-bot", tool_choice=NAMED)
    assert reply.model.startswith("tool-bot@")
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    _valid(call.function.name, call.function.arguments)
    streamed, _ = _streamed_calls(openai_client, model="tool-bot", tool_choice=NAMED)
    assert len(streamed) == 1 and _valid(*streamed[0]) is not None


def test_streamed_required_tool_call_on_a_lora_adapter_is_valid_json(openai_client, admin, live_server):
    source = make_adapter(live_server.adapter_root, "tool-bot-2", live_server.model_dir, seed=51)
    assert admin.post("/v1/adapters", json={"name": "tool-bot-2", "source": str(source)}).status_code == 201
    streamed, _ = _streamed_calls(openai_client, model="tool-bot-2", tool_choice="required",
                                  parallel_tool_calls=False)
    assert len(streamed) == 1 and _valid(*streamed[0]) is not None


# -- the Responses API ----------------------------------------------------------------------

def test_responses_plain_and_streamed(openai_client):
    whole = openai_client.responses.create(model="tiny", input="Tell me about the sea.",
                                           max_output_tokens=8, temperature=0)
    assert whole.object == "response" and whole.id.startswith("resp_")
    assert whole.output_text and whole.usage.output_tokens == 8

    events = list(openai_client.responses.create(model="tiny", input="Tell me about the sea.",
                                                 max_output_tokens=8, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text == events[-1].response.output_text


def test_responses_function_tool(openai_client):
    tool = {"type": "function", "name": "get_weather", "description": "Weather forecast",
            "parameters": WEATHER}
    reply = openai_client.responses.create(
        model="tiny", input="What is the weather in Paris?", tools=[tool], tool_choice="required",
        parallel_tool_calls=False, max_output_tokens=MAX_TOKENS, temperature=0)
    calls = [item for item in reply.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id
    _valid(calls[0].name, calls[0].arguments)

    events = list(openai_client.responses.create(
        model="tiny", input="What is the weather in Paris?", tools=[tool], tool_choice="required",
        parallel_tool_calls=False, max_output_tokens=MAX_TOKENS, temperature=0, stream=True))
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and json.loads(done[0].arguments) == json.loads(calls[0].arguments)


def test_responses_on_an_adapter(openai_client, admin, live_server):
    source = make_adapter(live_server.adapter_root, "resp-bot", live_server.model_dir, seed=52)
    assert admin.post("/v1/adapters", json={"name": "resp-bot", "source": str(source)}).status_code == 201
    reply = openai_client.responses.create(model="resp-bot", input="Hello", max_output_tokens=4)
    assert reply.model.startswith("resp-bot@") and reply.usage.output_tokens == 4


def test_responses_refuse_what_needs_a_store(openai_client):
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.responses.create(model="tiny", input="Hello", store=True)
    assert err.value.body["param"] == "store"
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.responses.create(model="tiny", input="Hello", previous_response_id="resp_x")
    assert err.value.body["param"] == "previous_response_id"
