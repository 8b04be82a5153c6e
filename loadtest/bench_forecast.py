"""Time-LLM on a real series: accuracy vs seasonal naive, and forecasts/s with batching on vs off.

    .venv/bin/python loadtest/bench_forecast.py [--epochs 5] [--requests 64]

Data: the airline passengers series (monthly, 1949-1960) that sktime ships. The adapter is
trained on the first 108 months with the built-in tiny LLM frozen; every 12-month forecast whose
target lies in the last 36 months is scored. Throughput: the FrozenRuntime deployment on Ray
Serve, `--requests` concurrent single-series requests through a Serve handle, with
`max_batch_size` 16 (micro-batching on) and 1 (off), in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SEQ_LEN, HORIZON, SEASON, TRAIN = 36, 12, 12, 108


def accuracy(llm, series: list[float], epochs: int, out: Path) -> Path:
    from floe.adapters.timeseries import TimeLLMConfig
    from floe.adapters.timeseries.model import save
    from floe.adapters.timeseries.train import TrainConfig, train

    cfg = TimeLLMConfig(seq_len=SEQ_LEN, horizon=HORIZON, description=(
        "Monthly totals of international airline passengers, 1949 to 1960, in thousands."))
    t0 = time.perf_counter()
    net, report = train(llm, {"airline": series[:TRAIN]}, cfg, TrainConfig(epochs=epochs))
    print(f"trained {epochs} epochs on {report['train_windows']} windows in {time.perf_counter() - t0:.0f}s "
          f"(LLM frozen; trainable parameters: {sum(p.numel() for p in net.parameters()):,})")
    y = np.asarray(series)
    starts = range(TRAIN, len(y) - HORIZON + 1)
    with torch.no_grad():
        lookbacks = torch.tensor(np.stack([y[s - SEQ_LEN:s] for s in starts]), dtype=torch.float32)
        pred = net(llm, lookbacks).numpy()
    target = np.stack([y[s:s + HORIZON] for s in starts])
    naive = np.stack([y[s - SEASON:s - SEASON + HORIZON] for s in starts])
    print(f"\nairline, {len(target)} forecasts of {HORIZON} months, targets in the last 36 months:")
    print(f"{'method':<22}{'MSE':>12}{'MAE':>10}")
    for name, p in (("Time-LLM (tiny LLM)", pred), ("seasonal naive (12)", naive)):
        print(f"{name:<22}{np.mean((p - target) ** 2):>12.1f}{np.mean(np.abs(p - target)):>10.2f}")
    return save(out, net, llm.fingerprint)


async def _fire(handle, calls) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*[handle.run.remote(c) for c in calls])
    return time.perf_counter() - t0


async def _register(registry, adapter: Path):
    ref = await registry.register.remote("airline", str(adapter))
    return await registry.activate.remote(ref.model_id)


def throughput(model_dir: Path, adapter: Path, series: list[float], requests: int) -> None:
    import tempfile

    import ray
    from ray import serve

    from floe.server.config import FloeConfig
    from floe.server.registry.deployment import RegistryServer
    from floe.server.runtime.deployment import frozen_runtime_class
    from floe.server.runtime.messages import RuntimeCall
    from floe.server.schemas.forecasts import ForecastCall

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "FLOE_CACHE_DIR": os.environ["FLOE_CACHE_DIR"]}})
    y = series
    print(f"\nforecasts/s, {requests} concurrent requests (1 series each) to one FrozenRuntime replica:")
    rates = {}
    quiet = {"log_level": "WARNING", "enable_access_log": False}
    try:
        for batch in (16, 1):
            cfg = FloeConfig(model={"path": str(model_dir)}, runtime={
                "max_batch_size": batch, "batch_wait_timeout_s": 0.01, "num_cpus": 1},
                adapters={"roots": [str(adapter.parent)], "state_dir": tempfile.mkdtemp()})
            data = cfg.dump_for_deploy()
            registry = serve.deployment(RegistryServer, name="AdapterRegistry", logging_config=quiet,
                                        ray_actor_options={"num_cpus": 0}).bind(data, "bench")
            app = serve.deployment(frozen_runtime_class(4), name="FrozenRuntime",
                                   ray_actor_options={"num_cpus": 1}, max_ongoing_requests=1024,
                                   logging_config=quiet).bind(data, registry)
            handle = serve.run(app, name="bench", route_prefix=None)
            ref = asyncio.run(_register(serve.get_deployment_handle("AdapterRegistry", "bench"), adapter))
            calls = [RuntimeCall("timeseries", ForecastCall(series=[y[i % 60:i % 60 + SEQ_LEN + 24]]), ref=ref)
                     for i in range(requests)]
            handle = handle.options(multiplexed_model_id=ref.model_id)
            asyncio.run(_fire(handle, calls[:4]))  # warm: adapter load
            seconds = min(asyncio.run(_fire(handle, calls)) for _ in range(2))
            rates[batch] = requests / seconds
            print(f"  max_batch_size={batch:<3} {rates[batch]:8.1f} forecasts/s")
            serve.delete("bench")
        print(f"  batching speed-up: {rates[16] / rates[1]:.2f}x")
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="Time-LLM training epochs on the 108 months")
    parser.add_argument("--requests", type=int, default=64, help="concurrent forecasts per batching setting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("FLOE_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".floe-cache"))
    torch.set_num_threads(args.threads)
    from sktime.datasets import load_airline

    from floe.server.models.builtin import prepare
    from floe.server.runtime.model import FrozenModel

    series = [float(v) for v in load_airline().values]  # ships with sktime: no download
    model_dir = prepare("floe-tiny-chat")
    llm = FrozenModel(model_dir)
    adapter = accuracy(llm, series, args.epochs, Path(tempfile.mkdtemp(prefix="airline-")) / "airline")
    throughput(model_dir, adapter, series, args.requests)


if __name__ == "__main__":
    main()
