"""One real floe server shared by tests/clients and tests/docs (at most one per session).

Both directories' conftests hand out the `floe_live` fixture; the server runs in its own process
(tests/serving.py) and stops right after the last selected test that uses it, freeing its
memory before later packages start theirs.
The server is the real application (Ray Serve + vLLM on the built-in tiny model), configured
with the keys and names the docs use, so the docs' examples run unchanged except for the URL.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest

from tests.server.live import LiveServer, make_adapter

API_KEY = "floe-api-key"
ADMIN_KEY = "floe-admin-key"
MODEL = "floe-tiny-chat"
FIXTURE = "floe_live"



class Live(LiveServer):
    """The shared server, with builders of adapters under its allowed root."""

    def adapter(self, name: str, seed: int) -> Path:
        """A fresh PEFT LoRA directory `name` under the allowed root."""
        return make_adapter(self.adapter_root, name, self.model_dir, seed=seed)

    def timeseries_adapter(self, name: str) -> Path:
        """A real Time-LLM adapter (one short epoch on synthetic seasonal series) under the root."""
        target = self.adapter_root / name
        if not target.exists():
            train_timeseries(self.model_dir, target)
        return target


TINY_TS = dict(seq_len=24, horizon=6, patch_len=8, stride=4, d_model=16, n_heads=2, d_ff=16,
               num_prototypes=32, description="Synthetic seasonal test series.")


def seasonal(n: int, phase: float = 0.0, level: float = 10.0) -> list[float]:
    return [level + 0.05 * t + 3 * math.sin(2 * math.pi * t / 12 + phase) for t in range(n)]


def train_timeseries(model_dir: Path, out: Path) -> Path:
    import torch

    from floe.adapters.timeseries import TimeLLMConfig
    from floe.adapters.timeseries.model import save
    from floe.adapters.timeseries.train import TrainConfig, train
    from floe.server.runtime.model import FrozenModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        llm = FrozenModel(model_dir)
        series = {f"s{i}": seasonal(60, phase=i) for i in range(2)}
        net, _ = train(llm, series, TimeLLMConfig(**TINY_TS), TrainConfig(epochs=1, batch_size=16))
        return save(out, net, llm.fingerprint)
    finally:
        torch.set_num_threads(threads)


_live: Live | None = None
_process = None  # tests.serving.FloeProcess
_last_user: str | None = None


def start() -> Live:
    """`floe serve` in its own process (tests/serving.py), so other packages' servers coexist."""
    global _live, _process
    if _live is not None:
        return _live
    from floe.server.models.builtin import cache_root, prepare
    from floe.server.models.demos import prepare_demos
    from tests.serving import start_floe

    model_dir = prepare(MODEL)
    # the default serve's demo adapters too (built once, cached): the guides use them
    demos = {name: str(path) for name, path in prepare_demos(model_dir, cache_root()).items()}
    work = Path(tempfile.mkdtemp(prefix="floe-sdk-tests-"))
    root = work / "adapters"
    root.mkdir()
    _process = start_floe({
        "model": {"path": str(model_dir), "name": MODEL},
        "engine": {"kv_cache_memory_bytes": 64 * 2**20, "max_lora_rank": 16, "max_loras": 2,
                   "max_model_len": 512},
        "http": {"max_body_bytes": 64 * 1024},
        "auth": {"api_keys": [API_KEY], "admin_key": ADMIN_KEY},
        "adapters": {"roots": [str(root)], "state_dir": str(work / "state"), "drain_timeout_s": 60,
                     "preload": demos},
        "retrieval": {"path": str(work / "qdrant")},
        "ray": {"num_cpus": 2},
    }, work / "server")
    _live = Live(url=_process.url, model=MODEL, model_dir=model_dir, adapter_root=root)
    return _live


def stop() -> bool:
    """Stop the server (Ctrl-C to its process group); False if it needed SIGKILL."""
    global _live, _process
    if _process is None:
        return True
    process, _process, _live = _process, None, None
    return process.stop()


# --- hooks, imported into each conftest that hands out the fixture -------------------------

def pytest_collection_finish(session) -> None:
    """Remember the last selected test that uses the server (after -k / -m deselection)."""
    global _last_user
    users = [item.nodeid for item in session.items if FIXTURE in getattr(item, "fixturenames", ())]
    _last_user = users[-1] if users else None


def pytest_runtest_teardown(item, nextitem) -> None:
    if item.nodeid == _last_user or nextitem is None:
        assert stop(), "the SDK test server did not stop within 90 s of Ctrl-C"


def pytest_sessionfinish(session, exitstatus) -> None:
    stop()


@pytest.fixture(scope="session")
def floe_live() -> Live:
    return start()
