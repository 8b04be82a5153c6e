"""Fixtures: a tiny Llama trained here in seconds (TEST_SPEC) and its held-out text."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from floe.quant.refmodel import HELDOUT_FILE, TEST_SPEC, build_reference_model, corpus

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
    return [p for p in corpus(TEST_SPEC.max_chars)[0].split("\n\n") if p.strip()][:400]


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


def greedy_text(model, tok, prompt: str = "The for statement", n: int = 8) -> str:
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + n
    return tok.decode(out[0][ids["input_ids"].shape[1]:])
