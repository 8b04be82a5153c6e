"""Real floe servers for tests, each in its own process with its own Ray instance.

Every test package that needs a server starts it through here, so several can coexist in one
pytest run (an in-process `ray.init` would allow only one Serve application per process).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_floe(cmd: list[str], port: int, log_path: Path, cwd: Path | None = None,
               timeout_s: float = 600, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start a floe server process, wait for /ready; returns (process, url)."""
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "VLLM_CACHE_ROOT": str(log_path.parent / "vllm-cache"),
                                 **(env or {})})
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
    raise AssertionError(f"{cmd} did not become ready in {timeout_s:.0f}s:\n{log_path.read_text()[-3000:]}")


def stop_floe(proc: subprocess.Popen, timeout_s: float = 90) -> bool:
    """Ctrl-C the server's process group; True when it stopped in time."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return False


@dataclass
class FloeProcess:
    url: str
    process: subprocess.Popen
    log: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> bool:
        return stop_floe(self.process)


def start_floe(config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None) -> FloeProcess:
    """`floe serve --config <yaml of config>` on a free port (any `http.port` is replaced)."""
    port = free_port()
    config = {**config, "http": {**config.get("http", {}), "port": port}}
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "floe.yaml"
    path.write_text(yaml.safe_dump(config))
    log = workdir / "serve.log"
    proc, url = spawn_floe([sys.executable, "-m", "floe.server.cli", "serve", "--config", str(path)],
                           port, log, env=env)
    return FloeProcess(url=url, process=proc, log=log)
