"""The FrozenRuntime endpoints on the real application (Ray Serve + vLLM + FrozenRuntime + Qdrant)."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from floe.adapters.image_encoder import model as image_encoder
from floe.adapters.timeseries.model import load
from tests.runtime.helpers import TINY_TS, seasonal
from tests.runtime.images import data_url, manual_embedding, png
from tests.runtime.values import API_KEY, IMAGE_SEED

pytestmark = pytest.mark.slow


def test_served_forecast_equals_offline_adapter(server, llm, ts_adapter):
    client, _ = server
    history = seasonal(50)
    reply = client.post("/v1/forecasts", json={
        "model": "tiny-ts", "series": [history, seasonal(30, phase=1.0)], "horizon": 5,
    })
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["horizon"], body["lookback"], len(body["forecasts"])) == (5, TINY_TS.seq_len, 2)
    net = load(ts_adapter, llm)
    with torch.no_grad():
        want = net(llm, torch.tensor([history[-TINY_TS.seq_len:]]))[0, :5]
    torch.testing.assert_close(torch.tensor(body["forecasts"][0]["values"]), want, atol=1e-4, rtol=1e-5)


def test_timestamps_continue_the_series(server):
    client, _ = server
    stamps = [f"2021-{m:02d}-01" for m in range(1, 13)] + [f"2022-{m:02d}-01" for m in range(1, 13)]
    reply = client.post("/v1/forecasts", json={"model": "tiny-ts", "series": seasonal(24),
                                               "timestamps": stamps, "horizon": 2})
    assert reply.status_code == 200, reply.text
    assert reply.json()["forecasts"][0]["timestamps"] == ["2023-01-01T00:00:00", "2023-02-01T00:00:00"]


def test_concurrent_batched_equals_one_at_a_time(server):
    client, _ = server
    bodies = [{"model": "tiny-ts", "series": [seasonal(24 + i, phase=i)]} for i in range(8)]
    alone = [client.post("/v1/forecasts", json=b).json()["forecasts"][0]["values"] for b in bodies]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda b: client.post("/v1/forecasts", json=b).json(), bodies))
    for a, t in zip(alone, together):
        np.testing.assert_allclose(t["forecasts"][0]["values"], a, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("body, status, param", [
    ('{"model": "tiny-ts", "series": [1, 2, NaN' + ', 4' * 30 + ']}', 400, "series[0]"),
    ('{"model": "tiny-ts", "series": [1, Infinity' + ', 4' * 30 + ']}', 400, "series[0]"),
    ('{"model": "tiny-ts", "series": [1, 2, 3]}', 400, "series[0]"),
    ('{"model": "tiny-ts", "series": [' + ", ".join(["1"] * 501) + ']}', 400, "series[0]"),
    ('{"model": "tiny-ts", "series": [' + ", ".join(["1"] * 30) + '], "horizon": 99}', 400, "horizon"),
    ('{"model": "tiny-ts", "series": [' + ", ".join(["1"] * 30) + '], "horizon": 0}', 400, "horizon"),
    ('{"model": "tiny-ts", "series": "abc"}', 400, "series"),
    ('{"model": "tiny", "series": [' + ", ".join(["1"] * 30) + ']}', 400, "model"),
    ('{"model": "enc-last", "series": [' + ", ".join(["1"] * 30) + ']}', 400, "model"),
    ('{"model": "nope", "series": [' + ", ".join(["1"] * 30) + ']}', 404, "model"),
])
def test_bad_forecasts(server, body, status, param):
    client, _ = server
    reply = client.post("/v1/forecasts", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["message"]


def test_embeddings_with_the_openai_client(server):
    from openai import BadRequestError, OpenAI

    _, url = server
    client = OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
    floats = client.embeddings.create(model="tiny", input=["hello world", "frozen models"],
                                      encoding_format="float")
    vecs = np.array([d.embedding for d in floats.data])
    assert vecs.shape == (2, 256) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert floats.usage.prompt_tokens > 0
    raw = client.embeddings.with_raw_response.create(model="tiny", input="hello world",
                                                     encoding_format="base64")
    b64 = np.frombuffer(base64.b64decode(raw.http_response.json()["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(b64, vecs[0], atol=1e-6)
    short = client.embeddings.create(model="tiny", input=[[11, 42, 7]], dimensions=32).data[0].embedding
    assert len(short) == 32 and abs(np.linalg.norm(short) - 1) < 1e-5
    adapter = client.embeddings.create(model="enc-last", input="hello world").data[0].embedding
    assert not np.allclose(adapter, vecs[0])
    mini = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a dog", "a puppy", "tax law"])
    m = np.array([d.embedding for d in mini.data])
    assert m.shape == (3, 384) and m[0] @ m[1] > m[0] @ m[2]
    for bad in ({"input": [], "model": "tiny"}, {"input": "x", "model": "tiny", "dimensions": 999},
                {"input": [[999999]], "model": "tiny"}, {"input": "x", "model": "tiny-ts"}):
        with pytest.raises(BadRequestError):
            client.embeddings.create(**bad)


def test_retrieval_collections(server):
    client, _ = server
    docs = [("d1", "the cat sat on the mat", "pets"), ("d2", "dogs love long walks", "pets"),
            ("d3", "interest rates rose again", "finance"), ("d4", "the stock market fell", "finance")]
    assert client.post("/v1/retrieval/collections",
                       json={"name": "kb", "model": "all-MiniLM-L6-v2"}).status_code == 201
    assert client.post("/v1/retrieval/collections",
                       json={"name": "kb", "model": "all-MiniLM-L6-v2"}).status_code == 409
    reply = client.post("/v1/retrieval/collections/kb/points", json={"points": [
        {"id": i, "text": t, "payload": {"topic": topic}} for i, t, topic in docs]})
    assert reply.json()["upserted"] == 4, reply.text
    hits = client.post("/v1/retrieval/collections/kb/search",
                       json={"text": "kittens and cats", "top_k": 2}).json()["data"]
    assert hits[0]["id"] == "d1" and hits[0]["payload"]["text"] == docs[0][1]
    hits = client.post("/v1/retrieval/collections/kb/search",
                       json={"text": "cats", "top_k": 4, "filter": {"topic": "finance"}}).json()["data"]
    assert {h["id"] for h in hits} == {"d3", "d4"}
    listed = client.get("/v1/retrieval/collections").json()["data"]
    assert {"id": "kb", "points": 4, "dimension": 384}.items() <= listed[0].items()

    assert client.post("/v1/retrieval/collections", json={"name": "raw", "dimension": 3}).status_code == 201
    client.post("/v1/retrieval/collections/raw/points", json={"points": [
        {"id": 1, "vector": [1, 0, 0]}, {"id": 2, "vector": [0, 1, 0]}]})
    hits = client.post("/v1/retrieval/collections/raw/search", json={"vector": [0.1, 1, 0]}).json()["data"]
    assert [h["id"] for h in hits] == [2, 1]
    assert client.post("/v1/retrieval/collections/raw/search", json={"text": "x"}).status_code == 400
    assert client.post("/v1/retrieval/collections/raw/points",
                       json={"points": [{"id": 3, "vector": [1, 0]}]}).status_code == 400
    assert client.delete("/v1/retrieval/collections/raw").status_code == 200
    assert client.post("/v1/retrieval/collections/raw/search", json={"vector": [1, 0, 0]}).status_code == 404


def test_chat_with_a_runtime_adapter_is_a_clear_400(server):
    client, _ = server
    reply = client.post("/v1/chat/completions", json={
        "model": "tiny-ts", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "model"
    assert "timeseries" in reply.json()["error"]["message"]


def test_image_embeddings_equal_the_offline_adapter(server, llm, tmp_path):
    client, _ = server
    offline = image_encoder.write(tmp_path / "img-enc", llm.hidden_size, llm.fingerprint, seed=IMAGE_SEED)
    images = [png(21), png(22, (50, 31))]
    reply = client.post("/v1/embeddings", json={"model": "img-enc", "input": [data_url(x) for x in images]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    vecs = np.array([d["embedding"] for d in body["data"]])
    for vec, data in zip(vecs, images):
        np.testing.assert_allclose(vec, manual_embedding(offline, data).numpy(), atol=1e-5)
    assert body["usage"]["prompt_tokens"] == 2 * 17  # ViT tokens: (32 / 8) ** 2 patches + CLS
    raw = client.post("/v1/embeddings", json={"model": "img-enc", "input": data_url(images[0]),
                                              "encoding_format": "base64", "dimensions": 16}).json()
    short = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(short, vecs[0, :16] / np.linalg.norm(vecs[0, :16]), atol=1e-5)


@pytest.mark.parametrize("model, item, code", [
    ("img-enc", "a photo of a cat", None),
    ("img-enc", "https://example.com/cat.png", "unsupported_image_url"),
    ("img-enc", "data:image/png;base64,aGVsbG8gd29ybGQ=", "invalid_image"),
    ("img-enc", "data:image/png;base64,###", None),
    ("img-enc", [1, 2, 3], None),
    ("img-enc", "large", "image_too_large"),
    ("tiny", "small", None),
    ("all-MiniLM-L6-v2", "small", None),
])
def test_bad_image_embeddings(server, model, item, code):
    client, _ = server
    if item == "small":
        item = data_url(png(23, (8, 8)))
    elif item == "large":
        item = data_url(png(24, (100, 100)))  # ~30 kB of noise > IMAGE_LIMIT
    reply = client.post("/v1/embeddings", json={"model": model, "input": [item]})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "input" and error["message"]
    if code is not None:
        assert error["code"] == code
