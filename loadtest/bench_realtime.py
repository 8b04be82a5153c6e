"""Realtime first-audio latency on the default `floe serve`, batched vs one session at a time.

    python loadtest/bench_realtime.py --turns 3 --seconds 1.0 --max-tokens 12

Starts the default server (built-in base, `demo-speech`) twice: with the SessionRuntime's batched
step (`realtime.max_batch_sessions: 16`) and with one session per forward (`max_batch_sessions: 1`,
what a pipeline copy per user amounts to: nothing shared across users). For 1, 4 and 8 concurrent
sessions, each of the official openai realtime client, every session streams `--seconds` of audio
(100 ms appends, as a microphone would), commits, asks for a response and times commit -> first
`response.output_audio.delta`; `--turns` turns per session. Prints p50 / p90 per mode and
concurrency, next to Freeze-Omni's published anchor (745 ms mean, 1020 ms p90, one GPU per user).
Last line: `realtime first_audio_p50_ms batched=c1:..,c4:..,c8:.. alone=c1:..,c4:..,c8:..`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from stats import pct

API_KEY = "bench-key"
REPO = Path(__file__).resolve().parents[1]
MODEL = "demo-speech"
ANCHOR = "Freeze-Omni (paper, GPU, one pipeline per user): mean 745 ms, p90 1020 ms"


def start_server(workdir: Path, realtime: dict):
    sys.path.insert(0, str(REPO))
    from tests.serving import free_port, spawn_floe

    port = free_port()
    config = {"http": {"port": port}, "auth": {"api_keys": [API_KEY]}, "ray": {"num_cpus": 2},
              "realtime": realtime}
    path = workdir / "floe.yaml"
    path.write_text(yaml.safe_dump(config))
    return spawn_floe([sys.executable, "-m", "floe.server.cli", "serve", "--config", str(path)], port,
                      workdir / "serve.log", timeout_s=1800)


def clip(seconds: float, seed: int) -> bytes:
    x = 0.1 * np.random.default_rng(seed).standard_normal(int(24000 * seconds))
    return (x * 32767).astype("<i2").tobytes()


async def session(base_url: str, seed: int, args, latencies: list[float], errors: list[str]) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
    async with client.realtime.connect(model=MODEL) as conn:
        await conn.session.update(session={"type": "realtime", "max_output_tokens": args.max_tokens,
                                           "audio": {"input": {"turn_detection": None}}})
        for turn in range(args.turns):
            pcm = clip(args.seconds, seed * 100 + turn)
            for i in range(0, len(pcm), 4800):
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + 4800]).decode())
                await asyncio.sleep(0.1 * args.realtime_factor)
            start = time.perf_counter()
            await conn.input_audio_buffer.commit()
            await conn.response.create()
            first = None
            async for event in conn:
                if event.type == "response.output_audio.delta" and first is None:
                    first = time.perf_counter() - start
                elif event.type == "error":
                    errors.append(event.error.message)
                elif event.type == "response.done":
                    break
            if first is not None:
                latencies.append(first * 1000)


async def level(base_url: str, concurrency: int, args) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    await asyncio.gather(*(session(base_url, s, args, latencies, errors) for s in range(concurrency)))
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="audio per user turn")
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--realtime-factor", type=float, default=1.0,
                        help="1 = append audio at its real pace; 0 = as fast as possible")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    rows: dict[str, dict[int, tuple[float, float]]] = {}
    for mode, realtime in (("batched", {"max_batch_sessions": 16}), ("alone", {"max_batch_sessions": 1})):
        with tempfile.TemporaryDirectory(prefix=f"floe-bench-rt-{mode}-") as tmp:
            proc, url = start_server(Path(tmp), realtime)
            try:
                rows[mode] = {}
                asyncio.run(level(url + "/v1", 1, argparse.Namespace(**{**vars(args), "turns": 1})))  # warm-up
                for c in levels:
                    lat, errors = asyncio.run(level(url + "/v1", c, args))
                    if errors:
                        print(f"{mode} c={c}: {len(errors)} errors, first: {errors[0]}")
                    rows[mode][c] = (pct(lat, 50), pct(lat, 90))
                    print(f"{mode:8s} sessions={c}  first audio p50 {rows[mode][c][0]:7.0f} ms  "
                          f"p90 {rows[mode][c][1]:7.0f} ms  ({len(lat)} turns)", flush=True)
            finally:
                from tests.serving import stop_floe

                stop_floe(proc)
    print(ANCHOR)
    print("mode      " + "".join(f"  c={c}: p50 / p90 ms   " for c in levels))
    for mode, by in rows.items():
        print(f"{mode:8s}  " + "".join(f"  {by[c][0]:7.0f} / {by[c][1]:7.0f}  " for c in levels))
    fmt = lambda mode: ",".join(f"c{c}:{rows[mode][c][0]:.0f}" for c in levels)  # noqa: E731
    print(f"realtime first_audio_p50_ms batched={fmt('batched')} alone={fmt('alone')}")


if __name__ == "__main__":
    main()
