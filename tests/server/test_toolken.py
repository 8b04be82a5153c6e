"""Tool tokens (ToolkenGPT) on the real server, with the official openai client.

The adapter is trained here with the CLI (`floe adapters train toolken`) on the demo's synthetic
tools and phrasings, so "picks the right tool" is measured on phrasings it never saw. What the
tests hold: the served logits at the tool ids are h . E^T (a transformers fp32 reference, from
vLLM's raw logprobs), base requests in the same batch are untouched, a fired tool token becomes
OpenAI `tool_calls` with schema-valid arguments (streamed or not), listing tools restricts, and
bad adapters and requests are 400s.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import openai
import pytest

from floe.adapters.toolken import demo
from tests.server.live import make_adapter

pytestmark = pytest.mark.slow
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in demo.TOOLS}
MAX_TOKENS = 120


@pytest.fixture(scope="module")
def toolken(live_server, admin, tmp_path_factory):
    """A toolken adapter trained with the CLI on the demo's training phrasings, registered."""
    work = tmp_path_factory.mktemp("toolken")
    data = demo.write_jsonl(work / "train.jsonl")
    out = live_server.adapter_root / "tools-bot"
    done = subprocess.run([sys.executable, "-m", "floe.server.cli", "adapters", "train", "toolken", "--data",
                           str(data), "--out", str(out), "--model", str(live_server.model_dir)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation tool-selection accuracy" in done.stderr
    reply = admin.post("/v1/adapters", json={"name": "tools-bot", "source": str(out)})
    assert reply.status_code in (200, 201), reply.text
    lora = make_adapter(live_server.adapter_root, "tk-lora", live_server.model_dir, seed=71)
    assert admin.post("/v1/adapters", json={"name": "tk-lora", "source": str(lora)}).status_code in (200, 201)
    return out


def _ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _call(client, model: str, text: str, **kwargs):
    kwargs = {"max_tokens": MAX_TOKENS, "temperature": 0, **kwargs}
    return client.chat.completions.create(model=model, messages=_ask(text), **kwargs).choices[0]


def _valid(call) -> dict:
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name])
    return args


def _first_logprobs(client, model: str, messages: list[dict], ids: list[int]) -> dict[int, float]:
    """vLLM's raw logprobs of the first answer token at `ids` (tool tokens banned from being
    sampled on the adapter: a ban is a logit_bias, which raw logprobs do not include)."""
    banned = {"tool_choice": "none"} if model != "tiny" else {}
    reply = client.chat.completions.create(
        model=model, messages=messages, max_tokens=1, temperature=0, logprobs=True, **banned,
        extra_body={"logprob_token_ids": ids, "return_tokens_as_token_ids": True})
    entries = reply.choices[0].logprobs.content[0].top_logprobs
    return {int(e.token.split(":")[1]): e.logprob for e in entries}


# -- fidelity ---------------------------------------------------------------------------------

def test_served_logits_at_the_tool_ids_equal_h_dot_e_and_base_requests_are_untouched(live_server, openai_client,
                                                                                     toolken):
    from transformers import AutoConfig, AutoTokenizer

    from floe.adapters.toolken.train import reference_logprobs

    spare = list(range(len(AutoTokenizer.from_pretrained(live_server.model_dir)),
                       AutoConfig.from_pretrained(live_server.model_dir).vocab_size))
    tools = spare[: len(demo.TOOLS)]
    probe = [*tools, spare[-1], 5, 100, 700, 1500]  # tool ids, an unused spare id, some text ids
    prompts = [_ask("What is the weather in Lima?"), _ask("Tell me a joke."),
               _ask("Convert 20 GBP to JPY, then book a flight.")]
    jobs = [(m, p) for p in prompts for m in ("tools-bot", "tiny")]
    alone = [_first_logprobs(openai_client, m, p, probe) for m, p in jobs]
    barrier = threading.Barrier(len(jobs))

    def together(job):
        barrier.wait()
        return _first_logprobs(openai_client, *job, probe)

    with ThreadPoolExecutor(len(jobs)) as pool:
        batched = list(pool.map(together, jobs))
    base_ref = _base_reference(live_server.model_dir)
    for (model, messages), one, many in zip(jobs, alone, batched):
        want = (reference_logprobs(live_server.model_dir, toolken, messages) if model == "tools-bot"
                else base_ref(messages))
        for token in probe:
            assert math.isclose(one[token], float(want[token]), abs_tol=2e-4), (model, token, one[token],
                                                                                 float(want[token]))
            assert math.isclose(many[token], one[token], abs_tol=2e-4), (model, token)
    # the adapter changed exactly the tool rows: the text ids' logprobs differ only by the normaliser
    for k in range(0, len(jobs), 2):
        tk, base = alone[k], alone[k + 1]
        shifts = [tk[t] - base[t] for t in (5, 100, 700, 1500)]
        assert max(shifts) - min(shifts) < 1e-4, shifts


def _base_reference(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    @torch.no_grad()
    def logprobs(messages):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return torch.log_softmax(lm(torch.tensor([ids])).logits[0, -1], dim=-1)

    return logprobs


# -- tool calls -------------------------------------------------------------------------------

def test_unseen_phrasings_pick_the_right_tool_with_no_tool_listed(openai_client, toolken):
    held_out = [(text, tool) for text, tool in demo.requests(True, seed=7, fills=1) if tool is not None]
    right = 0
    for text, tool in held_out:
        choice = _call(openai_client, "tools-bot", text)
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            (call,) = choice.message.tool_calls
            assert call.type == "function" and call.id
            _valid(call)
            right += call.function.name == tool
        else:
            assert choice.message.content is not None
    assert right / len(held_out) > 3 * demo.CHANCE, (right, len(held_out))


def test_streamed_tool_call_equals_the_whole_answer(openai_client, toolken):
    text = "Give me the forecast for Cairo."
    whole = _call(openai_client, "tools-bot", text)
    assert whole.finish_reason == "tool_calls" and whole.message.tool_calls[0].function.name == "get_weather"
    name, pieces, finish, roles = None, [], None, 0
    stream = openai_client.chat.completions.create(model="tools-bot", messages=_ask(text), max_tokens=MAX_TOKENS,
                                                   temperature=0, stream=True, stream_options={"include_usage": True})
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        roles += delta.role is not None
        for call in delta.tool_calls or []:
            name = call.function.name or name
            pieces.append(call.function.arguments or "")
        finish = chunk.choices[0].finish_reason or finish
    assert roles == 1 and finish == "tool_calls" and name == "get_weather"
    assert json.loads("".join(pieces)) == json.loads(whole.message.tool_calls[0].function.arguments)
    assert usage is not None and usage.completion_tokens > 1


def test_listing_tools_restricts_which_may_fire(openai_client, toolken):
    text = "What is the weather in Paris?"
    assert _call(openai_client, "tools-bot", text).message.tool_calls[0].function.name == "get_weather"
    listed = [t for t in demo.TOOLS if t["function"]["name"] in ("play_music", "find_recipe")]
    auto = _call(openai_client, "tools-bot", text, tools=listed)
    assert all(c.function.name in ("play_music", "find_recipe") for c in auto.message.tool_calls or [])
    required = _call(openai_client, "tools-bot", text, tools=listed, tool_choice="required")
    assert required.finish_reason == "tool_calls"
    assert required.message.tool_calls[0].function.name in ("play_music", "find_recipe")
    _valid(required.message.tool_calls[0])
    named = _call(openai_client, "tools-bot", text, tool_choice={"type": "function", "function": {"name": "get_news"}})
    assert [c.function.name for c in named.message.tool_calls] == ["get_news"]
    _valid(named.message.tool_calls[0])
    none = _call(openai_client, "tools-bot", text, tool_choice="none", max_tokens=6)
    assert not none.message.tool_calls and none.finish_reason in ("length", "stop")


def test_mixed_batch_of_toolken_base_and_lora_equals_unbatched(live_server, openai_client, toolken):
    jobs = [("tools-bot", "Will it rain in Oslo tomorrow?"), ("tiny", "Tell me about boats."),
            ("tools-bot", "Play some jazz."), ("tk-lora", "Tell me about boats."), ("tools-bot", "Hi there!"),
            ("tools-bot", "Stock price of NVDA?")]

    def answer(job):
        choice = _call(openai_client, *job)
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []]
        return choice.finish_reason, choice.message.content, calls

    alone = [answer(job) for job in jobs]
    barrier = threading.Barrier(len(jobs))

    def together(job):
        barrier.wait()
        return answer(job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        assert list(pool.map(together, jobs)) == alone
    assert alone[0][0] == "tool_calls"


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, param", [
    ({"tools": [{"type": "function", "function": {"name": "launch_rocket", "parameters": {"type": "object"}}}]},
     "tools.0.function.name"),
    ({"tools": [{"type": "function"}]}, "tools.0.function"),
    ({"tools": []}, "tools"),
    ({"tool_choice": {"type": "function", "function": {"name": "launch_rocket"}}}, "tool_choice"),
    ({"tools": demo.TOOLS[:1], "tool_choice": {"type": "function", "function": {"name": "get_news"}}}, "tool_choice"),
    ({"n": 2}, "n"),
])
def test_bad_tool_requests_are_400(openai_client, toolken, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        _call(openai_client, "tools-bot", "What is the weather in Paris?", **kwargs)
    assert err.value.body["param"] == param, err.value.body


def _broken(root: Path, source: Path, name: str, edit) -> Path:
    target = root / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    edit(target)
    return target


def _manifest(path: Path, **changes):
    manifest = json.loads((path / "floe_adapter.json").read_text())
    (path / "floe_adapter.json").write_text(json.dumps({**manifest, **changes}))


def _weights(path: Path, rows: int, width: int):
    import torch
    from safetensors.torch import save_file

    save_file({"embedding": torch.randn(rows, width)}, str(path / "toolken.safetensors"))
    tools = json.loads((path / "tools.json").read_text())["tools"]
    extra = [{"type": "function", "function": {"name": f"extra_{i}"}} for i in range(max(0, rows - len(tools)))]
    (path / "tools.json").write_text(json.dumps({"tools": (tools + extra)[:rows]}))


@pytest.mark.parametrize("name, edit, needle", [
    ("tk-rank", lambda p: _weights(p, 20, 256), "max_lora_rank"),
    ("tk-width", lambda p: _weights(p, 12, 128), "hidden size"),
    ("tk-base", lambda p: _manifest(p, base_model="0" * 64), "trained for base"),
    ("tk-tools", lambda p: (p / "tools.json").write_text('{"tools": [{"type": "function"}]}'), "tools.json"),
    ("tk-rows", lambda p: _weights(p, 12, 256) or (p / "tools.json").write_text(
        json.dumps({"tools": demo.TOOLS[:5]})), "one row per tool"),
    ("tk-bias", lambda p: _manifest(p, config={"logits_bias": 1e9}), "logits_bias"),
])
def test_bad_adapters_are_400(live_server, admin, toolken, name, edit, needle):
    source = _broken(live_server.adapter_root, toolken, name, edit)
    reply = admin.post("/v1/adapters", json={"name": name, "source": str(source)})
    assert reply.status_code == 400, reply.text
    assert needle in reply.json()["error"]["message"], reply.text


def test_models_say_toolken(openai_client, toolken):
    kinds = {m.id: m.model_extra.get("kind") for m in openai_client.models.list().data}
    assert kinds["tools-bot"] == "toolken"
