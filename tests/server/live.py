"""What the tests of tests/server share: the live server's keys and shape, LoRA fixtures."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

API_KEY = "test-key"
ADMIN_KEY = "test-admin-key"


@dataclass
class LiveServer:
    url: str
    model: str
    model_dir: Path
    adapter_root: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


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

