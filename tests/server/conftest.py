"""One real floe application (Ray Serve + vLLM on the tiny built-in model) for the session."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

API_KEY = "test-key"
ADMIN_KEY = "test-admin-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    model: str
    model_dir: Path
    adapter_root: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    from floe.server.models.builtin import prepare

    return prepare("floe-tiny-chat")


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="session")
def live_server(base_model_dir, adapter_root, tmp_path_factory) -> Iterator[LiveServer]:
    """The real application: Gateway + AdapterRegistry + LLMServer(vLLM), over HTTP."""
    from floe.server import launcher
    from floe.server.config import FloeConfig

    os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="vllm-cache-"))
    port = free_port()
    config = FloeConfig(
        model={"path": str(base_model_dir), "name": "tiny"},
        # float32 so outputs can be compared exactly with transformers + peft.
        engine={"dtype": "float32", "kv_cache_memory_bytes": 128 * 2**20, "max_lora_rank": 16,
                "max_loras": 4, "max_model_len": 1024},
        http={"port": port, "max_body_bytes": 256 * 1024},
        auth={"api_keys": [API_KEY], "admin_key": ADMIN_KEY},
        adapters={"roots": [str(adapter_root)], "state_dir": str(tmp_path_factory.mktemp("state")),
                  "drain_timeout_s": 120, "max_loaded_per_replica": 3},
        ray={"num_cpus": 2},
    )
    url = launcher.start(config, progress=lambda _msg: None)
    try:
        yield LiveServer(url=url, model="tiny", model_dir=base_model_dir, adapter_root=adapter_root)
    finally:
        launcher.stop()


@pytest.fixture(scope="session")
def openai_client(live_server):
    from openai import OpenAI

    return OpenAI(base_url=live_server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def admin(live_server):
    import httpx

    with httpx.Client(base_url=live_server.url, timeout=300,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        yield client


def make_adapter(root: Path, name: str, base_dir: Path, seed: int, rank: int = 8) -> Path:
    """A seeded PEFT LoRA directory under the allowed root (fresh each call)."""
    import shutil

    from floe.server.models.builtin import build_lora

    cache = Path(os.environ["FLOE_CACHE_DIR"]) / "test-adapters" / f"{base_dir.name}-s{seed}-r{rank}"
    build_lora(base_dir, cache, seed=seed, rank=rank)
    target = root / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(cache, target)
    (target / "floe_built.json").unlink(missing_ok=True)
    return target


def spawn_floe(cmd: list[str], port: int, log_path: Path, cwd: Path | None = None,
               timeout_s: float = 600):
    """Start a floe server process (its own Ray), wait for /ready; returns (process, url)."""
    import subprocess
    import time

    import httpx

    log = log_path.open("w")
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "VLLM_CACHE_ROOT": str(log_path.parent / "vllm-cache")})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{cmd} exited:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_floe(proc)
    raise AssertionError(f"{cmd} did not become ready in {timeout_s:.0f}s")


def stop_floe(proc, timeout_s: float = 90) -> bool:
    """Ctrl-C the server's process group; True when it stopped in time."""
    import signal
    import subprocess

    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return False
