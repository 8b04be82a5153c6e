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
