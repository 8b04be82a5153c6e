"""The README's two set-up commands, executed: `make serve` answers the official openai client,
stops cleanly on Ctrl-C; `.ci/run` runs exactly the README's test command."""

from __future__ import annotations

import re
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


def test_make_serve_answers_the_openai_client_and_stops_on_ctrl_c(tmp_path):
    from openai import OpenAI

    from tests.serving import free_port, spawn_floe, stop_floe

    serve_cmd = readme_commands()[0]
    port = free_port()
    proc, url = spawn_floe([*serve_cmd.split(), f"SERVE_ARGS=--port {port}"], port,
                           tmp_path / "serve.log", cwd=REPO)
    try:
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
        # the URL line follows floe's own /ready poll, a moment after ours may have succeeded
        deadline = time.monotonic() + 30
        while "listens on" not in (tmp_path / "serve.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "listens on" in (tmp_path / "serve.log").read_text()
    finally:
        assert stop_floe(proc), "`make serve` did not stop within 90 s of Ctrl-C"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=5)
    assert "stopped" in (tmp_path / "serve.log").read_text()
