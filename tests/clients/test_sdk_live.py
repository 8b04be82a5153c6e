"""floe-client against the real server: Ray Serve + vLLM on the built-in tiny model."""

from __future__ import annotations

import asyncio

import pytest

from floe.client import (
    AsyncFloe,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    Floe,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from tests.clients.live import ADMIN_KEY, API_KEY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def floe(floe_live):
    with Floe(floe_live.url, api_key=API_KEY, admin_key=ADMIN_KEY, timeout=300) as client:
        yield client


def test_health_ready_and_metrics(floe, floe_live):
    assert floe.health().status == "ok"
    state = floe.wait_ready(timeout_s=60)
    assert state.ready and state.checks["engine"] and state.checks["registry"]
    reply = floe.openai().chat.completions.create(
        model=floe_live.model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.choices[0].message.content is not None
    metrics = floe.metrics()
    assert metrics.value("floe_requests_total", route="chat", model=floe_live.model, status="200") >= 1
    assert metrics.samples("floe_requests_in_flight")
    assert any(s.name.startswith("vllm:") for s in metrics.samples())


def test_adapter_lifecycle_and_use_through_openai(floe, floe_live):
    source = floe_live.adapter("sdk-bot", seed=11)
    added = floe.adapters.add("sdk-bot", str(source))
    assert (added.id, added.kind, added.state) == ("sdk-bot", "lora", "ready")
    assert added.model == f"sdk-bot@{added.version}" or added.model.startswith(f"sdk-bot@{added.version}")
    assert floe.adapters.add("sdk-bot", str(source)).version == added.version  # same content: no-op
    assert "sdk-bot" in floe.adapters.list().names()
    assert floe.adapters.get("sdk-bot").version == added.version

    oa = floe.openai(max_retries=0)
    assert "sdk-bot" in [m.id for m in oa.models.list().data]
    for model in ("sdk-bot", f"{floe_live.model}:sdk-bot", f"sdk-bot@{added.version}"):
        out = oa.completions.create(model=model, prompt="one two", max_tokens=3, temperature=0)
        assert out.choices[0].text is not None

    deleted = floe.adapters.delete("sdk-bot")
    assert deleted.deleted and deleted.id == "sdk-bot" and deleted.version == added.version
    with pytest.raises(NotFoundError) as info:
        floe.adapters.get("sdk-bot")
    assert info.value.param == "name" and info.value.code == "not_found"


def test_errors_carry_the_openai_body(floe, floe_live):
    with Floe(floe_live.url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(AuthenticationError) as info:
            bad.adapters.list()
    assert info.value.status_code == 401 and info.value.type == "authentication_error"
    assert info.value.code == "invalid_api_key"

    with Floe(floe_live.url, api_key=API_KEY, max_retries=0) as no_admin:  # API key, no admin key
        with pytest.raises(PermissionDeniedError) as info:
            no_admin.adapters.list()
    assert info.value.status_code == 403 and info.value.code == "permission_denied"

    with pytest.raises(PermissionDeniedError):  # outside every allowed root
        floe.adapters.add("escape", "/etc")
    with pytest.raises(BadRequestError) as info:
        floe.adapters.add("", "x")
    assert info.value.param == "name" and info.value.type == "invalid_request_error"
    with pytest.raises(ConflictError) as info:
        floe.adapters.add(floe_live.model, str(floe_live.adapter("dup", seed=12)))
    assert info.value.status_code == 409 and info.value.param == "name"
    with pytest.raises(PayloadTooLargeError) as info:
        floe.adapters.add("big", "x" * (80 * 1024))  # the test server allows 64 KiB
    assert info.value.code == "request_too_large"
    with pytest.raises(NotFoundError):
        floe.adapters.delete("never-registered")


def test_openai_client_is_configured(floe, floe_live):
    oa = floe.openai()
    assert str(oa.base_url).rstrip("/") == f"{floe_live.url}/v1" and oa.api_key == API_KEY
    stream = oa.chat.completions.create(model=floe_live.model, stream=True, max_tokens=4,
                                        messages=[{"role": "user", "content": "count"}])
    chunks = [c for c in stream]
    assert chunks and chunks[-1].choices[0].finish_reason in {"length", "stop"}
    import openai

    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="no-such-model", max_tokens=1,
                                   messages=[{"role": "user", "content": "x"}])


def test_async_client(floe_live):
    async def run():
        async with AsyncFloe(floe_live.url, api_key=API_KEY, admin_key=ADMIN_KEY, timeout=300) as floe:
            assert (await floe.health()).status == "ok"
            assert (await floe.ready()).ready
            source = floe_live.adapter("async-bot", seed=13)
            added, listed = await asyncio.gather(floe.adapters.add("async-bot", str(source)),
                                                 floe.adapters.list())
            assert added.state == "ready"
            reply = await floe.openai().completions.create(model="async-bot", prompt="a", max_tokens=2)
            assert reply.model.startswith("async-bot@")  # the served version
            assert (await floe.adapters.delete("async-bot")).deleted
            with pytest.raises(NotFoundError):
                await floe.adapters.get("async-bot")
            metrics = await floe.metrics()
            return metrics.value("floe_requests_total", route="completions", adapter="async-bot")

    assert asyncio.run(run()) >= 1


def test_embeddings(floe, floe_live):
    out = floe.embeddings.create(model=floe_live.model, input=["a frozen model", "hot-swapped adapters"])
    vectors = out.vectors()
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0
    packed = floe.embeddings.create(model=floe_live.model, input="a frozen model", encoding_format="base64")
    assert isinstance(packed.data[0].embedding, str)
    assert packed.vectors()[0] == pytest.approx(vectors[0], abs=1e-5)
    short = floe.embeddings.create(model="all-MiniLM-L6-v2", input="hello", dimensions=32)
    assert len(short.vectors()[0]) == 32 and short.usage.total_tokens > 0
    # the official client reads the same endpoint
    same = floe.openai().embeddings.create(model=floe_live.model, input="a frozen model")
    assert same.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)
    with pytest.raises(BadRequestError) as info:
        floe.embeddings.create(model=floe_live.model, input="")
    assert info.value.param == "input"


def test_retrieval(floe):
    coll = floe.retrieval.create_collection("sdk-docs", model="all-MiniLM-L6-v2")
    assert coll.id == "sdk-docs" and coll.dimension == 384 and coll.points == 0
    texts = ["the cat sat on the mat", "stock markets fell sharply today", "a kitten sleeps on a rug"]
    done = floe.retrieval.upsert("sdk-docs", [
        {"id": i, "text": t, "payload": {"topic": "pets" if i != 1 else "finance"}} for i, t in enumerate(texts)])
    assert done.upserted == 3 and floe.retrieval.get_collection("sdk-docs").points == 3
    hits = floe.retrieval.search("sdk-docs", text="a cat on a mat", top_k=2)
    assert hits.ids()[0] == 0 and hits.data[0].payload["text"] == texts[0]
    assert hits.data[0].score >= hits.data[1].score
    finance = floe.retrieval.search("sdk-docs", text="a cat", top_k=3, filter={"topic": "finance"})
    assert finance.ids() == [1]
    raw = floe.retrieval.create_collection("sdk-raw", dimension=3)
    floe.retrieval.upsert("sdk-raw", [{"id": "x", "vector": [1, 0, 0]}, {"id": "y", "vector": [0, 1, 0]}])
    assert floe.retrieval.search("sdk-raw", vector=[0.9, 0.1, 0], top_k=1).ids() == ["x"]
    assert {"sdk-docs", "sdk-raw"} <= set(floe.retrieval.list_collections().names())
    assert raw.dimension == 3
    for name in ("sdk-docs", "sdk-raw"):
        assert floe.retrieval.delete_collection(name).deleted
    with pytest.raises(NotFoundError):
        floe.retrieval.get_collection("sdk-raw")
    with pytest.raises(BadRequestError):
        floe.retrieval.search("nope-but-bad", top_k=1)  # neither text nor vector


def test_forecasts(floe, floe_live):
    from tests.clients.live import seasonal

    source = floe_live.timeseries_adapter("sdk-ts")
    adapter = floe.adapters.add("sdk-ts", str(source))
    assert adapter.kind == "timeseries" and adapter.state == "ready"
    out = floe.forecasts.create(model="sdk-ts", series=[seasonal(48), seasonal(48, phase=1.0)], horizon=6)
    assert out.horizon == 6 and [len(v) for v in out.values()] == [6, 6]
    one = floe.forecasts.create(model="sdk-ts", series=seasonal(48), horizon=6)
    assert one.values()[0] == pytest.approx(out.values()[0], rel=1e-4, abs=1e-4)
    with pytest.raises(BadRequestError):  # shorter than the adapter's lookback
        floe.forecasts.create(model="sdk-ts", series=seasonal(3), horizon=6)
    with pytest.raises(ValueError):  # NaN is not JSON: refused before anything is sent
        floe.forecasts.create(model="sdk-ts", series=[1.0, float("nan")] * 24, horizon=6)
    with pytest.raises(BadRequestError):
        floe.forecasts.create(model="sdk-ts", series=seasonal(48), horizon=10_000)
