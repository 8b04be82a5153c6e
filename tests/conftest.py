"""Shared test set-up: caches inside the run, quiet Ray and vLLM, no network."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Built models are cached inside the checkout (CI: inside the run), keyed by builder code.
os.environ.setdefault("FLOE_CACHE_DIR", str(REPO / ".floe-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# -- shared fixtures: the tiny built-in base, its FrozenModel, a tiny trained Time-LLM ------------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from floe.server.models.builtin import prepare

    return prepare("floe-tiny-chat")


@pytest.fixture(scope="session")
def llm(tiny_dir):
    from floe.server.runtime.model import FrozenModel

    return FrozenModel(tiny_dir)


@pytest.fixture(scope="session")
def ts_adapter(llm, tmp_path_factory):
    from tests.runtime.helpers import train_tiny_adapter

    return train_tiny_adapter(llm, tmp_path_factory.mktemp("ts") / "tiny-ts")
