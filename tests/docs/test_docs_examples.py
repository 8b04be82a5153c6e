"""Runs every ```bash and ```python block of docs/*.md against the real server, in order.

The docs are written for `floe serve --api-key floe-api-key --admin-key floe-admin-key
--adapter-root /srv/adapters` on http://127.0.0.1:8000; the test substitutes only the URL and
the adapter root, and prepares the adapters the guides register. curl runs with
`--fail-with-body`, so an error answer fails the block.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOC_URL = "http://127.0.0.1:8000"
DOC_ROOT = "/srv/adapters"
BLOCK = re.compile(r"^```(bash|python)[^\n]*\n(.*?)^```", re.S | re.M)
CURL = 'curl() { command curl --fail-with-body --silent --show-error "$@"; }\n'

pytestmark = pytest.mark.slow


def blocks(path: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(path.read_text())]


def guides() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md") if blocks(p))


def test_every_guide_has_examples_and_the_index_lists_them():
    index = (DOCS / "README.md").read_text()
    names = {p.name for p in guides()}
    assert {"chat.md", "adapters.md", "operations.md", "embeddings.md", "retrieval.md",
            "forecasts.md", "sdk.md"} <= names
    for name in names:
        assert f"]({name})" in index, name
    for path in guides():
        kinds = {kind for kind, _ in blocks(path)}
        assert "python" in kinds, path.name


def test_the_block_parser_reads_bash_and_python_only(tmp_path):
    sample = tmp_path / "x.md"
    sample.write_text("```console\nfloe serve\n```\n```bash\necho a\n```\ntext\n```python\nprint(1)\n```\n")
    assert blocks(sample) == [("bash", "echo a\n"), ("python", "print(1)\n")]


@pytest.mark.parametrize("guide", [p.name for p in guides()])
def test_guide_examples_run(guide, floe_live):
    floe_live.adapter("support-bot", seed=21)
    floe_live.timeseries_adapter("my-forecaster")
    env = {**os.environ, "FLOE_URL": floe_live.url}
    for number, (kind, code) in enumerate(blocks(DOCS / guide), 1):
        code = code.replace(DOC_URL, floe_live.url).replace(DOC_ROOT, str(floe_live.adapter_root))
        if kind == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", CURL + code]
        else:
            cmd = [sys.executable, "-c", code]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, (
            f"{guide} block {number} ({kind}) failed:\n{code}\n--- stdout\n{result.stdout}\n"
            f"--- stderr\n{result.stderr[-3000:]}")
        assert result.stdout.strip(), f"{guide} block {number} printed nothing"
