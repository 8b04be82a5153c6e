"""The README's two set-up commands, executed: `make serve` answers the official openai client,
stops cleanly on Ctrl-C; `.ci/run` runs exactly the README's test command."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Set-up: two commands.*?```bash\n(.*?)```", text, re.S)
    assert block, "README must open with the two set-up commands in a bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_the_two_commands_and_ci_runs_the_test_one():
    serve_cmd, test_cmd = readme_commands()
    assert serve_cmd == "make serve" and test_cmd == "make test"
    ci_lines = [ln.strip() for ln in (REPO / ".ci/run").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert test_cmd in ci_lines


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_make_serve_answers_the_openai_client_and_stops_on_ctrl_c(tmp_path):
    from openai import OpenAI

    serve_cmd = readme_commands()[0]
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [*serve_cmd.split(), f"SERVE_ARGS=--port {port}"], cwd=REPO, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "VLLM_CACHE_ROOT": str(tmp_path / "vllm")})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("`make serve` did not become ready")

        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        assert model == "floe-tiny-chat"
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=5)
        assert reply.usage.completion_tokens == 5
        chunks = list(client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, stream=True))
        assert chunks and chunks[-1].choices[0].finish_reason == "length"
        assert client.completions.create(model=model, prompt="Once", max_tokens=3).choices[0].text
        assert "listens on" in (tmp_path / "serve.log").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("`make serve` did not stop within 90 s of Ctrl-C")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=5)
    assert "stopped" in (tmp_path / "serve.log").read_text()
