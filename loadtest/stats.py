"""What the load scripts share: percentiles and the resident memory of a server's process tree."""

from __future__ import annotations

import time

import psutil


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def tree_rss(pid: int | None) -> int:
    """Bytes resident in `pid` and all its descendants (0 without a pid or once it is gone)."""
    if pid is None:
        return 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def token_arrived(start: float, last: float | None, ttft: list[float], itl: list[float]) -> float:
    """Record one streamed token: time to first token for the first, inter-token latency after.
    Returns the arrival time, the next call's `last`."""
    now = time.perf_counter()
    if last is None:
        ttft.append(now - start)
    else:
        itl.append(now - last)
    return now
