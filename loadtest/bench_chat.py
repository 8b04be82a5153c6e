"""Streaming chat load: floe (Ray Serve gateway + vLLM) against vLLM's own OpenAI server.

Both servers run the same model with the same engine arguments (`vllm_cli_args` derives
vLLM's command line from floe's engine config), one after the other in this run, driven by the
same client load: N concurrent clients, each sending streaming chat requests back to back.

    python loadtest/bench_chat.py --concurrency 8 --requests 48 --max-tokens 64

Prints p50 / p95 TTFT, inter-token latency, output tokens/s and peak RSS for both, then
`floe/vllm throughput=<ratio> ttft_p50=<ratio>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from stats import pct, token_arrived, tree_rss

PROMPT = ("You are a helpful assistant. Summarise the following notes about the harbour, the "
          "weather, the boats and the people who work there, in a few sentences: ")


@dataclass
class Run:
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    wall: float = 0.0
    errors: int = 0
    peak_rss: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def one_request(client: httpx.AsyncClient, url: str, model: str, max_tokens: int, run: Run, i: int) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT + f"note {i}."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    last = None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            run.errors += 1
            await response.aread()
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                run.tokens += chunk["usage"]["completion_tokens"]
            if not chunk.get("choices") or not chunk["choices"][0]["delta"].get("content"):
                continue
            last = token_arrived(start, last, run.ttft, run.itl)


async def drive(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> Run:
    run = Run()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            await one_request(client, url, model, max_tokens, run, queue.get_nowait())

    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one_request(client, url, model, 4, Run(), -1)  # warm-up, not measured
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        run.wall = time.perf_counter() - start
    return run


def wait_ready(url: str, path: str, proc: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


def measure(name: str, cmd: list[str], env: dict, url: str, ready_path: str, model: str, args) -> Run:
    print(f"[{name}] starting: {' '.join(cmd[:6])} ...", flush=True)
    log = open(Path(tempfile.gettempdir()) / f"bench-{name}.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(url, ready_path, proc)
        print(f"[{name}] ready; {args.concurrency} clients x {args.requests} requests", flush=True)
        run = asyncio.run(drive(url, model, args.concurrency, args.requests, args.max_tokens))
        run.peak_rss = tree_rss(proc.pid)
        return run
    finally:
        os.killpg(proc.pid, 2)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        if name == "floe":
            subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"],
                           capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="floe-bench-chat", help="built-in name or a HF model directory")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--order", default="vllm,floe", help="which server runs first")
    args = parser.parse_args()

    from floe.server.config import FloeConfig
    from floe.server.engine.vllm_engine import vllm_cli_args
    from floe.server.models.builtin import BUILTIN_MODELS, prepare

    if args.model in BUILTIN_MODELS:
        model_dir, served = prepare(args.model), args.model
    else:
        model_dir, served = Path(args.model).resolve(), Path(args.model).name
    config = FloeConfig(model={"path": str(model_dir), "name": served})
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "RAY_USAGE_STATS_ENABLED": "0"}

    runs: dict[str, Run] = {}
    for name in args.order.split(","):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if name == "vllm":
            cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                   *vllm_cli_args(config.engine, model_dir, served), "--port", str(port),
                   "--disable-uvicorn-access-log"]
            runs[name] = measure(name, cmd, env, url, "/health", served, args)
        else:
            cfg_file = Path(tempfile.mkdtemp()) / "floe.yaml"
            data = config.model_dump(mode="json", exclude_none=True)
            data["http"]["port"] = port
            cfg_file.write_text(yaml.safe_dump(data))
            cmd = [sys.executable, "-m", "floe.server.cli", "serve", "--config", str(cfg_file)]
            runs[name] = measure(name, cmd, env, url, "/ready", served, args)

    print()
    print(f"model={served} concurrency={args.concurrency} requests={args.requests} "
          f"max_tokens={args.max_tokens} cpus={os.cpu_count()}")
    header = (f"{'server':<6} {'ttft_p50':>9} {'ttft_p95':>9} {'itl_p50':>8} {'itl_p95':>8} "
              f"{'tok/s':>8} {'errors':>6} {'rss_GiB':>7}")
    print(header)
    for name, run in runs.items():
        print(f"{name:<6} {pct(run.ttft, 50) * 1e3:8.1f}ms {pct(run.ttft, 95) * 1e3:8.1f}ms "
              f"{pct(run.itl, 50) * 1e3:7.1f}ms {pct(run.itl, 95) * 1e3:7.1f}ms "
              f"{run.tokens / run.wall:8.1f} {run.errors:6d} {run.peak_rss / 2**30:7.2f}")
    floe, vllm = runs["floe"], runs["vllm"]
    throughput = (floe.tokens / floe.wall) / (vllm.tokens / vllm.wall)
    ttft = statistics.median(floe.ttft) / statistics.median(vllm.ttft)
    print(f"floe/vllm throughput={throughput:.3f} ttft_p50={ttft:.3f}")


if __name__ == "__main__":
    main()
