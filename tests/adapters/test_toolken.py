"""The toolken kind without a server: the lm_head LoRA places the tool rows exactly (through PEFT,
the format vLLM reads), the manifest and the base checks refuse bad adapters, the request plan
masks what may not fire, and the trainer learns tool selection from chat JSONL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from floe.adapters.toolken import ToolkenKind, lora_rank
from floe.adapters.toolken.lora import Base, check_against, lora_factors, prepare, write_lora
from floe.adapters.toolken.serving import BAN, ToolkenCall, plan_request
from floe.adapters.toolken.train import save
from floe.server.engine.messages import OpenAICall
from floe.server.errors import InvalidRequest
from floe.server.kinds import EngineLimits, InvalidAdapter


@pytest.mark.parametrize("n_tools, width", [(5, 16), (40, 16)])
def test_lora_factors_put_the_rows_at_the_ids_and_leave_the_rest(n_tools, width):
    gen = torch.Generator().manual_seed(0)
    head = torch.randn(64, width, generator=gen)
    rows = torch.randn(n_tools, width, generator=gen)
    ids = list(range(64 - n_tools, 64))
    a, b = lora_factors(rows, head[ids], ids, 64)
    assert a.shape[0] == lora_rank(n_tools, width) == min(n_tools, width)
    served = head + b @ a
    want = head.clone()
    want[ids] = rows
    torch.testing.assert_close(served, want, atol=1e-5, rtol=0)


def test_the_written_lora_equals_the_reference_through_peft(tiny_dir, tmp_path):
    """PEFT reads the directory the kind hands vLLM: its logits are concat(head(h), h E^T)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from floe.adapters.toolken.lora import head_rows, read_base

    base = read_base(tiny_dir)
    rows = torch.randn(6, base.width, generator=torch.Generator().manual_seed(1))
    ids = base.spare_ids[:6]
    a, b = lora_factors(rows, head_rows(tiny_dir, base, ids), ids, base.vocab_size)
    write_lora(tmp_path / "lora", a, b, tiny_dir)
    lm = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    prompt = torch.tensor([tokenizer("What is the weather in Oslo?")["input_ids"]])
    with torch.no_grad():
        h = lm.model(input_ids=prompt).last_hidden_state[0, -1]
        want = lm.lm_head(h)
        want[ids] = rows @ h
        peft = PeftModel.from_pretrained(lm, tmp_path / "lora").eval()
        got = peft(input_ids=prompt).logits[0, -1]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def _adapter(tmp_path: Path, tiny_dir: Path, n_tools: int = 3, width: int | None = None) -> Path:
    from floe.adapters.toolken.lora import read_base
    from floe.server.runtime.model import base_fingerprint

    tools = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {"type": "object"}}}
             for i in range(n_tools)]
    width = width or read_base(tiny_dir).width
    return save(tmp_path / "tk", torch.randn(n_tools, width), tools, base_fingerprint(tiny_dir))


def test_manifest_describes_and_limits_by_rank(tmp_path, tiny_dir):
    path = _adapter(tmp_path, tiny_dir, n_tools=3)
    info = ToolkenKind().manifest(path, EngineLimits(max_lora_rank=16))
    assert info.kind == "toolken" and info.details["tools"] == 3 and info.details["lora_rank"] == 3
    with pytest.raises(InvalidAdapter, match="max_lora_rank 2"):
        ToolkenKind().manifest(path, EngineLimits(max_lora_rank=2))
    (path / "tools.json").write_text(json.dumps({"tools": [{"type": "function", "function": {"name": "a b"}}]}))
    with pytest.raises(InvalidAdapter, match="function.name"):
        ToolkenKind().manifest(path, EngineLimits())


def test_base_checks_refuse_width_and_too_many_tools():
    base = Base(width=8, vocab_size=20, text_vocab=16, head_key="lm_head.weight")
    check_against(base, torch.zeros(4, 8))
    with pytest.raises(InvalidAdapter, match="this base has 4"):
        check_against(base, torch.zeros(5, 8))
    with pytest.raises(InvalidAdapter, match="hidden size is 8"):
        check_against(base, torch.zeros(2, 6))


def test_prepare_writes_a_lora_at_the_first_spare_ids(tmp_path, tiny_dir):
    placed = prepare(_adapter(tmp_path, tiny_dir), tiny_dir)
    config = json.loads((placed.scratch / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 3 and config["target_modules"] == ["lm_head"]
    assert placed.token_ids == placed.spare_ids[:3] and len(placed.spare_ids) == 64


def _loaded(tmp_path, tiny_dir):
    from floe.adapters.toolken import LoadedToolken

    placed = prepare(_adapter(tmp_path, tiny_dir, n_tools=4), tiny_dir)
    return LoadedToolken(model_id="tk@1", served_name="base", engine=None, tools=placed.tools,
                         token_ids=placed.token_ids, spare_ids=placed.spare_ids, bias=[0.0, 1.5, 0.0, 0.0],
                         scratch=placed.scratch)


def test_the_request_plan_masks_what_may_not_fire(tmp_path, tiny_dir):
    loaded = _loaded(tmp_path, tiny_dir)
    ids = loaded.token_ids
    body = {"model": "tk@1", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"7": 2.0}}
    auto = plan_request(loaded, OpenAICall("chat", body))
    assert isinstance(auto, ToolkenCall) and auto.allowed == (0, 1, 2, 3)
    assert auto.body["stop_token_ids"] == ids and "tools" not in auto.body
    assert auto.body["logit_bias"][str(ids[1])] == 1.5 and auto.body["logit_bias"]["7"] == 2.0
    assert all(auto.body["logit_bias"][str(t)] == BAN for t in loaded.spare_ids[4:])

    listed = plan_request(loaded, OpenAICall("chat", {**body, "tools": [loaded.tools[2]], "tool_choice": "required"}))
    assert listed.allowed == (2,) and listed.body["allowed_token_ids"] == [ids[2]]
    assert {listed.body["logit_bias"][str(t)] for t in (ids[0], ids[1], ids[3])} == {BAN}

    none = plan_request(loaded, OpenAICall("chat", {**body, "tool_choice": "none"}))
    assert none.allowed == () and none.body["stop_token_ids"] == []
    named = plan_request(loaded, OpenAICall("chat", {**body, "tool_choice": {"type": "function",
                                                                               "function": {"name": "tool_3"}}}))
    assert named.named == 3
    for bad, param in (({"tools": [{"type": "function", "function": {"name": "nope"}}]}, "tools.0.function.name"),
                       ({"n": 3}, "n"), ({"tool_choice": "sometimes"}, "tool_choice")):
        with pytest.raises(InvalidRequest) as err:
            plan_request(loaded, OpenAICall("chat", {**body, **bad}))
        assert err.value.param == param


def test_the_trainer_cli_learns_tool_selection_and_refuses_bad_data(tmp_path, tiny_dir):
    from floe.adapters.toolken import demo

    data = demo.write_jsonl(tmp_path / "train.jsonl", fills=2)
    out = tmp_path / "adapter"
    cmd = [sys.executable, "-m", "floe.server.cli", "adapters", "train", "toolken", "--data", str(data),
           "--out", str(out), "--model", str(tiny_dir), "--epochs", "10"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    training = json.loads((out / "floe_adapter.json").read_text())["training"]
    assert training["best"]["train_tool_accuracy"] > 0.9 and training["tools"] == len(demo.TOOLS)
    assert ToolkenKind().manifest(out, EngineLimits(max_lora_rank=16)).details["tools"] == len(demo.TOOLS)
    held_out = demo.evaluate(tiny_dir, out, fills=1)
    assert held_out["tool_accuracy"] > 3 * held_out["chance"], held_out

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "ghost", "arguments": "{}"}}]}], "tools": demo.TOOLS[:1]}) + "\n")
    refused = subprocess.run([*cmd[:7], str(bad), *cmd[8:]], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "ghost" in refused.stdout + refused.stderr


def test_the_demo_is_deterministic_and_far_above_chance(tmp_path, tiny_dir):
    from floe.adapters.toolken import demo

    first, second = demo.build(tiny_dir, tmp_path / "a"), demo.build(tiny_dir, tmp_path / "b")
    assert (first / "toolken.safetensors").read_bytes() == (second / "toolken.safetensors").read_bytes()
    held_out = json.loads((first / "floe_adapter.json").read_text())["training"]["held_out"]
    assert held_out["tool_accuracy"] > 3 * held_out["chance"], held_out


def test_routes_other_than_chat_pass_through():
    call = OpenAICall("completions", {"model": "x", "prompt": "hi"})
    assert plan_request(SimpleNamespace(), call) is call
