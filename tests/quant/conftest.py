"""Fixtures: a tiny Llama trained here in seconds (TEST_SPEC) and its held-out text."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from floe.quant.refdata import splits
from floe.quant.refmodel import HELDOUT_FILE, TEST_SPEC, build_reference_model

# NOTE: one core for torch, so a server test running beside this suite still gets one
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    cache = os.environ.get("FLOE_CACHE_DIR")
    root = Path(cache) / "quant-ref" if cache else tmp_path_factory.mktemp("quant-ref")
    return build_reference_model(TEST_SPEC, cache_dir=root, log=lambda *_: None)


@pytest.fixture(scope="session")
def heldout(tiny_model) -> str:
    return (tiny_model / HELDOUT_FILE).read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def calib_texts() -> list[str]:
    """The calibration split (disjoint from the model's training and held-out text)."""
    return splits(TEST_SPEC.max_chars).calib


@pytest.fixture(scope="session")
def mask_texts() -> list[str]:
    """The mask-learning split (MaskLLM trains and validates on it)."""
    return splits(TEST_SPEC.max_chars).mask


@pytest.fixture(scope="session")
def dense(tiny_model):
    from floe.quant.model_io import load_dense

    return load_dense(tiny_model)


@pytest.fixture(scope="session")
def dense_ppl(dense, heldout) -> float:
    from floe.quant.evaluate import perplexity

    model, tok = dense
    return perplexity(model, tok, heldout, seq_len=64, max_windows=40)


@pytest.fixture
def ppl_of(heldout, dense):
    """Held-out perplexity of a model (same windows as ``dense_ppl``)."""
    from floe.quant.evaluate import perplexity

    tok = dense[1]
    return lambda model: perplexity(model, tok, heldout, seq_len=64, max_windows=40)


@pytest.fixture
def generate(dense):
    """Greedy-generate ``n`` new tokens; asserts the model produced exactly ``n``."""
    tok = dense[1]

    def run(model, prompt: str = "The for statement", n: int = 8) -> list[int]:
        ids = tok(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        assert out.shape[1] == ids["input_ids"].shape[1] + n
        return out[0, ids["input_ids"].shape[1]:].tolist()

    return run


@pytest.fixture
def vllm_ppl(tmp_path, tiny_model):
    """Perplexity and greedy tokens of an output dir as served by vLLM CPU (subprocess)."""
    import json
    import subprocess
    import sys

    def run(out_dir: Path, seq_len: int = 64, windows: int = 40) -> dict:
        env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0",
                   VLLM_CACHE_ROOT=str(tmp_path / "vllm-cache"), OMP_NUM_THREADS="1")
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("vllm_ppl.py")), str(out_dir),
             str(tiny_model / HELDOUT_FILE), str(seq_len), str(windows)],
            capture_output=True, text=True, env=env, timeout=300)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, proc.stderr[-3000:]
        return json.loads(lines[-1][len("RESULT "):])

    return run
