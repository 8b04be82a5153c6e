"""Text for the reference LM and the benchmark: what every CPython ships, split four ways.

Documents: the Python documentation topics (``pydoc_data.topics``, English prose) and the
standard library's own pure-Python source files (code with docstrings and comments), minus
tests, code tables and bundled wheels. Each document goes to exactly one split by a hash of
its name, so the splits share no document:

- ``train``   (70%): trains the reference LM (and its tokenizer);
- ``calib``   (5%):  calibration text of the one-shot methods (GPTQ, Wanda, SparseGPT, QLLM);
- ``mask``    (20%): mask-learning text of MaskLLM (it holds out its own validation windows);
- ``heldout`` (5%):  perplexity only, never seen by training, calibration or mask learning.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# buckets of sha256(name) % 100, in order: [0, 5) held-out, [5, 10) calib, [10, 30) mask
_BOUNDS = (("heldout", 5), ("calib", 10), ("mask", 30), ("train", 100))
# generated tables, GUI / demo code and vendored trees: little language, lots of bytes
_SKIP_DIRS = {"test", "tests", "idle_test", "encodings", "idlelib", "lib2to3", "turtledemo",
              "pydoc_data", "ensurepip", "site-packages", "dist-packages", "__pycache__",
              "tkinter", "config-3.11-x86_64-linux-gnu"}
MAX_DOC_CHARS = 60_000  # a few huge files (_pydecimal, typing) would otherwise dominate a split


@dataclass(frozen=True)
class Splits:
    train: list[str]
    calib: list[str]
    mask: list[str]
    heldout: list[str]

    def sizes(self) -> dict[str, int]:
        return {k: sum(map(len, getattr(self, k))) for k in ("train", "calib", "mask", "heldout")}


def documents() -> list[tuple[str, str]]:
    """(name, text) of every document, in a fixed order (sorted names)."""
    import pydoc_data.topics as topics

    docs = [(f"topic:{k}", topics.topics[k]) for k in sorted(topics.topics)]
    libdir = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(libdir.rglob("*.py")):
        rel = path.relative_to(libdir)
        if any(part in _SKIP_DIRS or part.startswith("_sysconfigdata") for part in rel.parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) > 500:
            docs.append((f"src:{rel.as_posix()}", text[:MAX_DOC_CHARS]))
    return docs


def split_of(name: str) -> str:
    bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100
    return next(split for split, hi in _BOUNDS if bucket < hi)


def splits(max_chars: int | None = None) -> Splits:
    """The four disjoint splits. ``max_chars`` caps the total: each split keeps its share of it
    (and at least one document), taking its documents in hash order, a well-mixed prefix."""
    out: dict[str, list[tuple[str, str]]] = {k: [] for k, _ in _BOUNDS}
    for name, text in documents():
        out[split_of(name)].append((name, text))
    if max_chars is not None:
        lo = 0
        for split, hi in _BOUNDS:
            budget, kept, total = max_chars * (hi - lo) / 100, [], 0
            for doc in sorted(out[split], key=lambda d: hashlib.sha256(("order:" + d[0]).encode()).digest()):
                if kept and total + len(doc[1]) > budget:
                    continue
                kept.append(doc)
                total += len(doc[1])
            out[split], lo = sorted(kept), hi
    return Splits(**{k: [text for _, text in docs] for k, docs in out.items()})


def corpus_sha256(s: Splits) -> str:
    """Identity of the text (it changes with the CPython build that supplies it)."""
    h = hashlib.sha256()
    for split in ("train", "calib", "mask", "heldout"):
        for text in getattr(s, split):
            h.update(split.encode())
            h.update(hashlib.sha256(text.encode()).digest())
    return h.hexdigest()
