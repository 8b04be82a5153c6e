"""A local `floe serve` offers nothing to the network: its whole process tree (driver, GCS, raylet,
agents, Serve controller, proxy, replicas, vLLM workers) listens on loopback, beyond the HTTP port
when `http.host` asks for it. Ray's token authentication stays on."""

from __future__ import annotations

import ipaddress
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.serving import FloeProcess, free_port, spawn_floe, start_floe

pytestmark = pytest.mark.slow


def listening(root_pid: int) -> dict[tuple[str, int], str]:
    """(address, port) -> process name, for every TCP socket listening in root's process tree."""
    root = psutil.Process(root_pid)
    found = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            name = proc.name()
            sockets = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found.update({(s.laddr.ip, s.laddr.port): name for s in sockets if s.status == psutil.CONN_LISTEN})
    return found


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    # gRPC binds 127.0.0.1 through a dual-stack socket: "::ffff:127.0.0.1"
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def wait_started(server: FloeProcess, timeout_s: float = 60) -> None:
    """`serve.run` returns once every deployment runs; the URL line follows it."""
    deadline = time.monotonic() + timeout_s
    while "listens on" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "listens on" in server.log.read_text(), server.log.read_text()[-3000:]


def process_named(root_pid: int, name: str) -> psutil.Process:
    return next(p for p in psutil.Process(root_pid).children(recursive=True) if p.name() == name)


def test_default_serve_listens_on_loopback_only(tmp_path: Path):
    port = free_port()
    log = tmp_path / "serve.log"
    proc, url = spawn_floe([sys.executable, "-m", "floe.server.cli", "serve", "--port", str(port)], port, log)
    server = FloeProcess(url=url, process=proc, log=log)
    try:
        wait_started(server)
        sockets = listening(proc.pid)
        names = set(sockets.values())
        assert {"gcs_server", "raylet", "ray::ProxyActor"} <= names, sockets  # the scan sees Ray's tree
        assert any(n.startswith("ray::ServeRepli") for n in names), sockets
        exposed = {f"{ip}:{p}": n for (ip, p), n in sockets.items() if not is_loopback(ip)}
        assert not exposed, f"listening beyond loopback: {exposed}"
        assert process_named(proc.pid, "gcs_server").environ().get("RAY_AUTH_MODE") == "token"
    finally:
        assert server.stop(), "the server did not stop within 90 s of Ctrl-C"


def test_explicit_all_interfaces_host_exposes_only_the_http_port(tmp_path: Path):
    server = start_floe({"http": {"host": "0.0.0.0"}, "runtime": {"enabled": False}}, tmp_path)
    try:
        wait_started(server)
        port = int(server.url.rsplit(":", 1)[1])
        exposed = {(ip, p) for (ip, p) in listening(server.process.pid) if not is_loopback(ip)}
        assert exposed == {("0.0.0.0", port)}
    finally:
        assert server.stop(), "the server did not stop within 90 s of Ctrl-C"
