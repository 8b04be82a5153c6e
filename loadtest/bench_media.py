"""Media chat against text chat on the default `floe serve`, in one run.

    python loadtest/bench_media.py --concurrency 4 --requests 24 --max-tokens 32

1. Starts the default server (built-in base and demo adapters) and drives, at the same
   concurrency, streaming chats: text only (the base), an image (`demo-vision`) and an audio
   clip (`demo-audio`); prints TTFT p50 / p95 and output tokens/s for each.
2. The encoder's cost per request: each media kind's request hook (decode, preprocess, encoder,
   projector) timed in this process on the same inputs (median ms).
3. What `--enable-prompt-embeds` costs text-only chat: a second server with
   `engine.enable_prompt_embeds: false`, same text load; prints the ratio.
Last line: `media ttft_p50_ms text=.. image=.. audio=.. tok/s text=.. image=.. audio=..
prompt_embeds_text_throughput_ratio=..`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from stats import pct

API_KEY = "bench-key"
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    wall: float = 0.0
    errors: int = 0


def image_url(seed: int) -> str:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (240, 240, 240))
    colour = [(220, 30, 30), (30, 160, 40), (40, 60, 220)][seed % 3]
    ImageDraw.Draw(img).ellipse((12 + seed % 9, 12, 52, 52 - seed % 7), fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def wav_b64(seed: int, seconds: float = 1.0, rate: int = 16000) -> str:
    import numpy as np

    from floe.adapters.audio.decode import wav_bytes

    t = np.arange(int(seconds * rate)) / rate
    return base64.b64encode(wav_bytes(0.35 * np.sin(2 * np.pi * 220.0 * (1 + seed % 4) * t), rate)).decode()


def messages(kind: str, i: int) -> list[dict]:
    text = {"type": "text", "text": "Describe it in a few words."}
    if kind == "image":
        return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url(i)}}, text]}]
    if kind == "audio":
        part = {"type": "input_audio", "input_audio": {"data": wav_b64(i), "format": "wav"}}
        return [{"role": "user", "content": [part, text]}]
    return [{"role": "user", "content": f"Describe a quiet harbour in a few words, note {i}."}]


async def one(client: httpx.AsyncClient, model: str, kind: str, i: int, max_tokens: int, run: Run) -> None:
    body = {"model": model, "messages": messages(kind, i), "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
            if reply.status_code != 200:
                run.errors += 1
                return
            async for line in reply.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter()
                    run.ttft.append(first - start)
                if chunk.get("usage"):
                    run.tokens += chunk["usage"]["completion_tokens"]
    except httpx.HTTPError:
        run.errors += 1


async def load(url: str, model: str, kind: str, concurrency: int, requests: int, max_tokens: int) -> Run:
    run = Run()
    queue = list(range(requests))
    async with httpx.AsyncClient(base_url=url, timeout=600,
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        async def worker() -> None:
            while queue:
                await one(client, model, kind, queue.pop(), max_tokens, run)

        await one(client, model, kind, 10_000, max_tokens, Run())  # warm: the adapter loads
        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        run.wall = time.perf_counter() - t0
    return run


def start_server(workdir: Path, extra: dict) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(REPO))
    from tests.serving import free_port, spawn_floe

    port = free_port()
    config = {"http": {"port": port}, "auth": {"api_keys": [API_KEY]}, "runtime": {"enabled": False},
              "ray": {"num_cpus": 2}, **extra}
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "floe.yaml"
    path.write_text(yaml.safe_dump(config))
    return spawn_floe([sys.executable, "-m", "floe.server.cli", "serve", "--config", str(path)], port,
                      workdir / "serve.log", timeout_s=1800)


def encoder_cost(kind_name: str, adapter_dir: Path, base_dir: Path, n: int = 8) -> float:
    """Median ms of the kind's request hook (decode, preprocess, encoder, projector) in-process."""
    from floe.server.config import FloeConfig
    from floe.server.engine.llm_server import LLMBackbone
    from floe.server.engine.messages import OpenAICall
    from floe.server.kinds import get_kind

    kind = get_kind(kind_name)
    backbone = LLMBackbone(engine=None, config=FloeConfig(), model_dir=base_dir,  # type: ignore[arg-type]
                           served_name="floe-tiny-chat")

    async def measure() -> list[float]:
        loaded = await kind.load(adapter_dir, backbone, None)
        times = []
        for i in range(n):
            call = OpenAICall(route="chat", body={"model": "m", "messages": messages(
                "image" if kind_name == "vision" else "audio", i)})
            t0 = time.perf_counter()
            await kind.rewrite_request(loaded, call)
            times.append(time.perf_counter() - t0)
        return times

    return pct(asyncio.run(measure()), 50) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("FLOE_CACHE_DIR", str(REPO / ".floe-cache"))
    from floe.server.models.builtin import cache_root, prepare
    from floe.server.models.demos import demo_name, prepare_demos
    from floe.server.runtime.model import base_fingerprint  # noqa: F401  (torch loads here, once)

    base_dir = prepare("floe-tiny-chat")
    demos = prepare_demos(base_dir, cache_root(), progress=print)
    work = Path(tempfile.mkdtemp(prefix="floe-bench-media-"))
    runs: dict[str, Run] = {}
    proc, url = start_server(work / "default", {})
    try:
        for label, model in (("text", "floe-tiny-chat"), ("image", demo_name("vision")),
                             ("audio", demo_name("audio"))):
            if label != "text" and model not in demos:
                print(f"[{label}] skipped: no {model} on this server")
                continue
            runs[label] = asyncio.run(load(url, model, label, args.concurrency, args.requests, args.max_tokens))
    finally:
        proc.send_signal(2)
        proc.wait(timeout=120)
    plain_proc, plain_url = start_server(work / "no-embeds", {"engine": {"enable_prompt_embeds": False},
                                                             "adapters": {"demos": False}})
    try:
        plain = asyncio.run(load(plain_url, "floe-tiny-chat", "text", args.concurrency, args.requests,
                                 args.max_tokens))
    finally:
        plain_proc.send_signal(2)
        plain_proc.wait(timeout=120)

    print(f"\nconcurrency={args.concurrency} requests={args.requests} max_tokens={args.max_tokens} "
          f"cpus={os.cpu_count()}")
    print(f"{'chat':<22} {'ttft_p50':>9} {'ttft_p95':>9} {'tok/s':>8} {'errors':>6}")
    rows = {**{f"{k} (prompt embeds on)": v for k, v in runs.items()}, "text (prompt embeds off)": plain}
    for name, run in rows.items():
        print(f"{name:<22} {pct(run.ttft, 50) * 1e3:8.1f}ms {pct(run.ttft, 95) * 1e3:8.1f}ms "
              f"{run.tokens / max(run.wall, 1e-9):8.1f} {run.errors:>6}")
    costs = {k: encoder_cost(k, demos[demo_name(k)], base_dir) for k in ("vision", "audio") if demo_name(k) in demos}
    for kind, ms in costs.items():
        print(f"encoder cost per request ({kind}, in-process, median): {ms:.1f} ms")
    tps = {k: v.tokens / max(v.wall, 1e-9) for k, v in runs.items()}
    ratio = tps.get("text", 0.0) / max(plain.tokens / max(plain.wall, 1e-9), 1e-9)
    print("media ttft_p50_ms " + " ".join(f"{k}={pct(v.ttft, 50) * 1e3:.0f}" for k, v in runs.items())
          + " tok/s " + " ".join(f"{k}={t:.1f}" for k, t in tps.items())
          + f" prompt_embeds_text_throughput_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
