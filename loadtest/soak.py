"""Soak: hold N concurrent streaming chats against a running floe server for a given time.

    python loadtest/soak.py --url http://127.0.0.1:8000 --api-key KEY --streams 64 --minutes 5 \
        --pid <pid of `floe serve`>

Every stream sends one streaming chat request after another until the time is up. A 429 with
`Retry-After` is the only allowed refusal (the stream waits as told, then goes on); anything
else (a 5xx, a cut stream, a missing `[DONE]`, an `error` event) counts as failed. Prints
completed / refused / failed, p50 / p95 TTFT and inter-token latency, and the server's resident
memory (the process tree of `--pid`) every `--every` seconds, then a last line
`soak streams=N minutes=M completed=C refused=R failed=F rss_start_GiB=a rss_end_GiB=b`.
The loop is bounded in count and time and sends only to the URL given (use loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx
from stats import pct, token_arrived, tree_rss


@dataclass
class Tally:
    completed: int = 0
    refused: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


async def one_chat(client: httpx.AsyncClient, args: argparse.Namespace, tally: Tally, i: int) -> float:
    """One streamed chat; returns seconds to wait before the next (Retry-After on a 429)."""
    body = {"model": args.model, "stream": True, "max_tokens": args.max_tokens,
            "messages": [{"role": "user", "content": f"Say something about the sea, note {i}."}]}
    start = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code == 429:
                if "retry-after" not in response.headers:
                    tally.fail("429 without Retry-After")
                    return 1.0
                tally.refused += 1
                return float(response.headers["retry-after"])
            if response.status_code != 200:
                tally.fail(f"HTTP {response.status_code}")
                return 0.0
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    done = True
                    break
                if "error" in json.loads(payload):
                    tally.fail("error event")
                    return 0.0
                last = token_arrived(start, last, tally.ttft, tally.itl)
            if done:
                tally.completed += 1
            else:
                tally.fail("stream ended without [DONE]")
    except httpx.HTTPError as exc:
        tally.fail(type(exc).__name__)
    return 0.0


async def stream_loop(client: httpx.AsyncClient, args: argparse.Namespace, tally: Tally, deadline: float,
                      index: int) -> None:
    n = 0
    while time.monotonic() < deadline and n < args.max_requests_per_stream:
        wait = await one_chat(client, args, tally, index * 100_000 + n)
        n += 1
        if wait:
            await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))


async def main_async(args: argparse.Namespace) -> Tally:
    tally = Tally()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.streams + 8, max_keepalive_connections=args.streams)
    deadline = time.monotonic() + args.minutes * 60
    rss_start = tree_rss(args.pid) / 2**30
    print(f"soak: {args.streams} streams for {args.minutes} min against {args.url} (rss {rss_start:.2f} GiB)")
    async with httpx.AsyncClient(base_url=args.url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(args.timeout_s)) as client:
        tasks = [asyncio.create_task(stream_loop(client, args, tally, deadline, i)) for i in range(args.streams)]
        t0 = time.monotonic()
        while not all(t.done() for t in tasks):
            await asyncio.sleep(min(args.every, max(0.1, deadline - time.monotonic())))
            print(f"  t={time.monotonic() - t0:6.0f}s completed={tally.completed} refused={tally.refused} "
                  f"failed={tally.failed} ttft_p95={pct(tally.ttft, 95) * 1e3:.0f}ms "
                  f"rss={tree_rss(args.pid) / 2**30:.2f}GiB", flush=True)
        await asyncio.gather(*tasks)
    rss_end = tree_rss(args.pid) / 2**30
    print(f"ttft p50={pct(tally.ttft, 50) * 1e3:.1f}ms p95={pct(tally.ttft, 95) * 1e3:.1f}ms   "
          f"itl p50={pct(tally.itl, 50) * 1e3:.1f}ms p95={pct(tally.itl, 95) * 1e3:.1f}ms")
    if tally.reasons:
        print("failures:", ", ".join(f"{k}: {v}" for k, v in sorted(tally.reasons.items())))
    print(f"soak streams={args.streams} minutes={args.minutes:g} completed={tally.completed} "
          f"refused={tally.refused} failed={tally.failed} rss_start_GiB={rss_start:.2f} rss_end_GiB={rss_end:.2f}")
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", default="floe-tiny-chat")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-requests-per-stream", type=int, default=100_000, help="bound on the loop")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between progress lines")
    parser.add_argument("--pid", type=int, default=None, help="the server's pid, for its memory")
    args = parser.parse_args()
    tally = asyncio.run(main_async(args))
    raise SystemExit(1 if tally.failed else 0)


if __name__ == "__main__":
    main()
