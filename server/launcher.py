"""`floe serve`: start (or join) Ray, run the Serve application, wait for readiness, shut down."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from floe.server.config import FloeConfig

Progress = Callable[[str], None]

# Ray Serve's own throughput mode, less direct ingress (which would move the HTTP port).
# Measured with loadtest/bench_chat.py on 2 cores: floe/vllm throughput 0.72 -> 0.90.
SERVE_THROUGHPUT_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
}

# A Ray instance floe starts serves this machine alone, so every Ray process listens on loopback.
# Ray's "no cluster" mode (its default on macOS and Windows) makes the node IP loopback, and Ray
# derives each bind address from it: GCS, raylet, object manager, workers, agents, metrics.
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class StartupError(RuntimeError):
    pass


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def serve_grpc_on_loopback() -> None:
    """Worker setup hook of a local instance: Serve's inter-deployment gRPC server on loopback.

    Ray Serve 2.60 binds it to "[::]:0" whatever the node IP (serve/_private/replica.py, from
    ray-project/ray#59908) and offers no setting; callers dial the replica's node IP, loopback here.
    """
    import ray
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None:  # a later Ray; tests/server/test_loopback.py tells whether it still binds "::"
        return
    node_ip = ray.util.get_node_ip_address()
    loopback = f"[{node_ip}]:0" if ":" in node_ip else f"{node_ip}:0"
    replica.add_port_to_grpc_server = (
        lambda server, address: bind(server, loopback if address == "[::]:0" else address))


def _wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise StartupError(f"the server did not become ready within {timeout_s:.0f}s")


def start(config: FloeConfig, progress: Progress = print) -> str:
    """Start the application and return its URL once `/ready` answers 200."""
    # NOTE: before Ray is imported: Ray and Serve read these when their modules load, here and in
    # every process the local Ray instance starts (they inherit this environment).
    local = config.ray.address is None
    if local:
        os.environ.update(LOCAL_RAY_ENV)
        if config.ray.throughput_optimized:
            for key, value in SERVE_THROUGHPUT_ENV.items():
                os.environ.setdefault(key, value)
    import ray
    from ray import serve

    from floe.server.app import build_app
    from floe.server.models import resolve_base_model

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")
    model_dir, name = resolve_base_model(config)
    progress(f"model ready: {name} ({model_dir})")
    if local:
        _check_port_free(config.http.host, config.http.port)
    forwarded = ("FLOE_", "VLLM_", "HF_", "RAY_SERVE_")
    runtime_env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(forwarded)}}
    if local:
        runtime_env["worker_process_setup_hook"] = f"{__name__}.{serve_grpc_on_loopback.__name__}"
    # NOTE: "local" always starts a fresh instance; None could attach to a cluster that
    # happens to run on this machine.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    ray.init(address=config.ray.address or "local", num_cpus=config.ray.num_cpus, include_dashboard=False,
             configure_logging=True, logging_level="WARNING", runtime_env=runtime_env)
    for sig, handler in handlers.items():  # ray.init installs its own SIGTERM handler (exit at once)
        if handler is not None:
            signal.signal(sig, handler)
    if local and not ipaddress.ip_address(ray.util.get_node_ip_address()).is_loopback:
        # Ray reads LOCAL_RAY_ENV when first imported: something imported it before start().
        raise StartupError("the local Ray instance would listen beyond loopback (ray was imported too early)")
    progress(f"ray started ({'local' if local else config.ray.address})")
    serve.start(http_options={"host": config.http.host, "port": config.http.port})
    progress("starting the engine (vLLM) and gateway deployments...")
    serve.run(build_app(config), name=config.ray.app_name, route_prefix="/", blocking=False)
    url = f"http://{config.http.host}:{config.http.port}"
    _wait_ready(url, timeout_s=900)
    progress(f"engine ready; floe listens on {url}  (OpenAI base_url: {url}/v1)")
    return url


def stop() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()  # nothing left to do after drain_and_shut_down
    except Exception as exc:  # e.g. a handle's loop already closed by a second Ctrl-C: Ray goes anyway
        print(f"serve shutdown: {exc}")
    finally:
        ray.shutdown()


def serve_forever(config: FloeConfig, progress: Progress = print) -> None:
    """Run until SIGINT / SIGTERM; then drain (new requests refused, running ones finish, for at
    most `deployment.graceful_shutdown_s`; a second signal cuts it short) and shut down."""
    signals: list[int] = []
    stop_event = threading.Event()

    def on_signal(sig: int, _frame: Any) -> None:
        signals.append(sig)
        stop_event.set()
        if len(signals) > 1:
            raise KeyboardInterrupt  # a second signal: stop now, in-flight requests or not

    def install() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

    install()
    try:
        start(config, progress)
        stop_event.wait()
        grace = config.deployment.graceful_shutdown_s
        progress(f"draining: new requests get 503, running ones have up to {grace:.0f}s (again to stop now)")
        asyncio.run(drain_and_shut_down(config, grace, progress))
    except KeyboardInterrupt:
        progress("stopping now")
    finally:
        progress("shutting down...")
        stop()
        progress("stopped")


async def drain_and_shut_down(config: FloeConfig, grace_s: float, progress: Progress = print) -> None:
    """Drain (server/drain.py), then shut Serve down from the same event loop: the driver's
    Serve handles run on it (floe's throughput settings) and must close before it does."""
    from ray import serve

    from floe.server.drain import wait_drained

    try:
        if grace_s > 0 and await wait_drained(config.ray.app_name, grace_s, progress):
            progress("drained: no request in flight")
    except Exception as exc:  # the application is already gone or broken: nothing left to drain
        progress(f"drain skipped: {exc}")
    finally:
        await serve.shutdown_async()
