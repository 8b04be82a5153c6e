"""The Qdrant store: data survives a restart; recall@10 against brute-force numpy."""

from __future__ import annotations

import numpy as np
import pytest

from floe.server.errors import Conflict, InvalidRequest, NotFound
from floe.server.retrieval.store import VectorStore


def test_data_survives_restart(tmp_path):
    store = VectorStore(path=tmp_path / "q")
    store.create("docs", 3, model="all-MiniLM-L6-v2")
    store.upsert("docs", ["a", 7, "b"], [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                 [{"lang": "en"}, {"lang": "fr"}, {"lang": "en"}])
    with pytest.raises(Conflict):
        store.create("docs", 3)
    store.close()

    store = VectorStore(path=tmp_path / "q")  # a new process would see the same
    info = store.get("docs")
    assert (info["points"], info["dimension"], info["model"]) == (3, 3, "all-MiniLM-L6-v2")
    hits = store.search("docs", [0.9, 0.1, 0.0], top_k=2)
    assert [h["id"] for h in hits] == ["a", 7]
    assert [h["id"] for h in store.search("docs", [0.9, 0.1, 0], 5, {"lang": "en"})] == ["a", "b"]
    qdrant_filter = {"must_not": [{"key": "lang", "match": {"value": "en"}}]}
    assert [h["id"] for h in store.search("docs", [1, 0, 0], 5, qdrant_filter)] == [7]
    with pytest.raises(InvalidRequest):
        store.search("docs", [1, 0], 5)
    with pytest.raises(InvalidRequest):
        store.search("docs", [1, 0, 0], 5, {"must": "nonsense"})
    store.delete("docs")
    with pytest.raises(NotFound):
        store.get("docs")
    store.close()


def test_recall_at_10_against_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((2000, 64)).astype(np.float32)
    queries = rng.standard_normal((50, 64)).astype(np.float32)
    store = VectorStore(path=tmp_path / "q")
    store.create("random", 64, distance="cosine")
    for i in range(0, len(data), 500):
        store.upsert("random", list(range(i, i + 500)), data[i:i + 500].tolist(), [None] * 500)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    recalls = []
    for q in queries:
        truth = set(np.argsort(-(unit @ (q / np.linalg.norm(q))))[:10].tolist())
        got = {h["id"] for h in store.search("random", q.tolist(), 10)}
        recalls.append(len(truth & got) / 10)
    store.close()
    print(f"recall@10 = {np.mean(recalls):.3f}")
    assert np.mean(recalls) >= 0.99
