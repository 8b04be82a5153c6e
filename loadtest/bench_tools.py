"""Tool selection with 1,000 tools: tool tokens (toolken) against tools listed in the prompt, one run.

    python loadtest/bench_tools.py --tools 1000 --queries 40

1. Builds a bench base: the built-in tiny model's shape with 1,024 spare vocabulary rows
   (`ModelSpec(spare_tokens=1024)`), so 1,000 tool rows fit one lm_head LoRA of rank
   min(1000, d=256) = 256 (`engine.max_lora_rank: 256`).
2. Synthesises 1,000 tools (a verb x an object: `archive_invoice`, `rename_playlist`, ...) with
   bounded schemas, three training phrasings each, and trains a toolken adapter on them with the
   trainer of `floe adapters train toolken` (frozen LLM; CPU time printed).
3. Serves it and asks held-out phrasings (two phrasings per tool the trainer never saw):
   - toolken: no tool in the request; accuracy = the call names the right tool;
   - prompt: the OpenAI tools API on the base with as many tools as the context holds (the right
     one included, i.e. an oracle retrieval step), tool_choice "required"; accuracy likewise;
     and the share of 1,000 tools that fit at all;
   - TTFT (streamed, to the first delta): toolken vs prompt listing; plain text on the adapter
     (tool tokens banned) vs the base (what the LoRA costs a text request).
The base has random weights: prompt listing picks at chance among what it sees, which is the
honest baseline for a model that has not learned to read tool lists; toolken accuracy is what E
learned. Last line: `tools toolken_acc=.. prompt_acc=.. prompt_fits=.. ttft_ms toolken=.. prompt=..
adapter_text=.. base_text=..`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from stats import pct

API_KEY = "bench-key"
REPO = Path(__file__).resolve().parents[1]
VERBS = ["archive", "rename", "share", "delete", "export", "print", "schedule", "translate", "summarize", "lock",
         "restore", "tag", "upload", "sync", "merge", "validate", "encrypt", "publish", "download", "approve",
         "reject", "duplicate", "pin", "mute", "forward"]
OBJECTS = ["invoice", "playlist", "photo", "contract", "calendar", "ticket", "report", "folder", "message",
           "recipe", "budget", "spreadsheet", "podcast", "receipt", "order", "meeting", "document", "album",
           "password", "backup", "newsletter", "survey", "timesheet", "map", "note", "video", "slide", "invite",
           "profile", "bookmark", "task", "reminder", "form", "chart", "log", "queue", "page", "list", "draft",
           "comment"]
TRAIN = ["Please {v} the {o}.", "Can you {v} my {o}?", "I need to {v} this {o} now."]
HELD_OUT = ["{V} the {o} for me, thanks.", "Would you {v} that {o}?"]


def tools(n: int) -> list[dict]:
    pairs = [(v, o) for o in OBJECTS for v in VERBS][:n]
    if len(pairs) < n:
        raise SystemExit(f"at most {len(VERBS) * len(OBJECTS)} synthetic tools")
    return [{"type": "function", "function": {
        "name": f"{v}_{o}", "description": f"{v.capitalize()} a {o}",
        "parameters": {"type": "object", "required": ["id"], "additionalProperties": False,
                       "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99}}}}} for v, o in pairs]


def phrase(template: str, name: str) -> str:
    verb, obj = name.split("_", 1)
    return template.format(v=verb, V=verb.capitalize(), o=obj)


def write_data(path: Path, defs: list[dict]) -> Path:
    with open(path, "w") as fh:
        for tool in defs:
            name = tool["function"]["name"]
            for template in TRAIN:
                fh.write(json.dumps({"tools": [tool], "messages": [
                    {"role": "user", "content": phrase(template, name)},
                    {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                        "name": name, "arguments": '{"id": 1}'}}]}]}) + "\n")
    return path


def bench_base(cache: Path) -> Path:
    """The tiny built-in shape with 1,024 spare rows (built once, cached by its spec)."""
    import hashlib
    from dataclasses import asdict

    from floe.server.models.builtin import ModelSpec, build_model

    spec = ModelSpec(name="floe-toolken-bench", vocab_size=2048 + 1024, spare_tokens=1024)
    key = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:12]
    target = cache / "models" / f"{spec.name}-{key}"
    if not (target / "config.json").is_file():
        tmp = Path(tempfile.mkdtemp(dir=cache))
        build_model(spec, tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(target)
    return target


def fit_in_context(defs: list[dict], gold: dict, tokenizer, budget: int, rng: random.Random) -> list[dict]:
    """The gold tool and as many others as fit in `budget` prompt tokens (the chat template's rendering)."""
    others = [t for t in defs if t is not gold]
    rng.shuffle(others)
    listed = [gold]
    ask = [{"role": "user", "content": "x" * 40}]
    for tool in others:
        ids = tokenizer.apply_chat_template(ask, tools=[*listed, tool], add_generation_prompt=True, tokenize=True,
                                            return_dict=False)
        if len(ids) > budget:
            break
        listed.append(tool)
    rng.shuffle(listed)
    return listed


def ask(client: httpx.Client, body: dict) -> tuple[float, str | None]:
    """(TTFT ms to the first content or tool-call delta, the called tool's name)."""
    t0, first, name = time.perf_counter(), None, None
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True, "temperature": 0}) as reply:
        if reply.status_code != 200:
            raise SystemExit(f"{reply.status_code}: {reply.read().decode()[:400]}")
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices") or []:
                delta = choice.get("delta") or {}
                if first is None and (delta.get("content") or delta.get("tool_calls")):
                    first = (time.perf_counter() - t0) * 1000
                for call in delta.get("tool_calls") or []:
                    name = (call.get("function") or {}).get("name") or name
    return first if first is not None else float("nan"), name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tools", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--context", type=int, default=2048, help="engine.max_model_len")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from transformers import AutoTokenizer

    from floe.adapters.toolken.train import TrainConfig, train_to_dir
    from floe.server.models.builtin import cache_root
    from tests.serving import free_port, spawn_floe, stop_floe

    work = Path(tempfile.mkdtemp(prefix="bench-tools-"))
    base = bench_base(cache_root())
    defs = tools(args.tools)
    started = time.process_time()
    adapter, report = train_to_dir(base, write_data(work / "train.jsonl", defs), work / "adapters" / "many-tools",
                                   TrainConfig(epochs=20, lr=0.05, val_fraction=0.0))
    train_cpu = time.process_time() - started
    print(f"trained {report['tools']} tool rows on {report['train_turns']} turns in {train_cpu:.1f} CPU s "
          f"(train tool accuracy {report['best']['train_tool_accuracy']:.1%})")

    port = free_port()
    config = {"http": {"port": port}, "auth": {"api_keys": [API_KEY]}, "runtime": {"enabled": False},
              "ray": {"num_cpus": 2}, "model": {"path": str(base), "name": "bench-base"},
              "engine": {"max_lora_rank": 256, "max_model_len": args.context, "kv_cache_memory_bytes": 256 * 2**20},
              "adapters": {"roots": [str(work / "adapters")], "preload": {"many-tools": str(adapter)}}}
    (work / "floe.yaml").write_text(yaml.safe_dump(config))
    proc, url = spawn_floe([sys.executable, "-m", "floe.server.cli", "serve", "--config", str(work / "floe.yaml")],
                           port, work / "serve.log", timeout_s=1800)
    rng = random.Random(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    queries = [(phrase(rng.choice(HELD_OUT), t["function"]["name"]), t) for t in rng.sample(defs, args.queries)]
    budget = args.context - 160  # room for the call itself
    rows: dict[str, list[float]] = {k: [] for k in ("toolken", "prompt", "adapter_text", "base_text")}
    right = {"toolken": 0, "prompt": 0}
    fits: list[int] = []
    try:
        with httpx.Client(base_url=url, timeout=600, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            ask(client, {"model": "many-tools", "messages": [{"role": "user", "content": "warm"}], "max_tokens": 4})
            for text, gold in queries:
                messages = [{"role": "user", "content": text}]
                ttft, name = ask(client, {"model": "many-tools", "messages": messages, "max_tokens": 40})
                rows["toolken"].append(ttft)
                right["toolken"] += name == gold["function"]["name"]
                listed = fit_in_context(defs, gold, tokenizer, budget, rng)
                fits.append(len(listed))
                ttft, name = ask(client, {"model": "bench-base", "messages": messages, "tools": listed,
                                          "tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 60})
                rows["prompt"].append(ttft)
                right["prompt"] += name == gold["function"]["name"]
                for key, model, extra in (("adapter_text", "many-tools", {"tool_choice": "none"}),
                                          ("base_text", "bench-base", {})):
                    ttft, _ = ask(client, {"model": model, "messages": messages, "max_tokens": 4, **extra})
                    rows[key].append(ttft)
    finally:
        stop_floe(proc)
    n = len(queries)
    listed_mean = sum(fits) / len(fits)
    print(f"\n{args.tools} tools, {n} held-out queries, context {args.context} tokens, CPU, random-weight base")
    print(f"{'method':<34}{'accuracy':>10}{'chance':>10}{'TTFT p50 ms':>14}{'p95 ms':>10}")
    print(f"{'toolken (no tool in the prompt)':<34}{right['toolken'] / n:>10.1%}{1 / args.tools:>10.2%}"
          f"{pct(rows['toolken'], 50):>14.0f}{pct(rows['toolken'], 95):>10.0f}")
    print(f"{f'prompt listing ({listed_mean:.0f} tools fit)':<34}{right['prompt'] / n:>10.1%}{1 / listed_mean:>10.2%}"
          f"{pct(rows['prompt'], 50):>14.0f}{pct(rows['prompt'], 95):>10.0f}")
    print(f"{'  (share of the tools that fit)':<34}{listed_mean / args.tools:>10.1%}")
    print(f"{'text on the adapter (tools banned)':<34}{'':>20}{pct(rows['adapter_text'], 50):>14.0f}"
          f"{pct(rows['adapter_text'], 95):>10.0f}")
    print(f"{'text on the base (baseline)':<34}{'':>20}{pct(rows['base_text'], 50):>14.0f}"
          f"{pct(rows['base_text'], 95):>10.0f}")
    print(f"tools toolken_acc={right['toolken'] / n:.3f} prompt_acc={right['prompt'] / n:.3f} "
          f"prompt_fits={listed_mean / args.tools:.3f} ttft_ms toolken={pct(rows['toolken'], 50):.0f} "
          f"prompt={pct(rows['prompt'], 50):.0f} adapter_text={pct(rows['adapter_text'], 50):.0f} "
          f"base_text={pct(rows['base_text'], 50):.0f}")


if __name__ == "__main__":
    main()
