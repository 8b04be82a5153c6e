"""The official `openai` client against the real server (Ray Serve + vLLM, tiny model)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.server.live import API_KEY

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


def test_models_lists_the_base_model(openai_client, live_server):
    ids = [m.id for m in openai_client.models.list().data]
    assert live_server.model in ids
    assert openai_client.models.retrieve(live_server.model).id == live_server.model


def test_chat_completion_with_usage_and_max_tokens(openai_client, live_server):
    reply = openai_client.chat.completions.create(
        model=live_server.model, messages=MESSAGES, max_tokens=7, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 7
    assert reply.usage.prompt_tokens > 0
    assert reply.choices[0].finish_reason == "length"


def test_greedy_is_deterministic_and_base_alias_works(openai_client, live_server):
    a = openai_client.chat.completions.create(model=live_server.model, messages=MESSAGES,
                                              max_tokens=10, temperature=0)
    b = openai_client.chat.completions.create(model="base", messages=MESSAGES,
                                              max_tokens=10, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_streaming_chat_matches_non_streaming(openai_client, live_server):
    whole = openai_client.chat.completions.create(model=live_server.model, messages=MESSAGES,
                                                  max_tokens=12, temperature=0)
    stream = openai_client.chat.completions.create(
        model=live_server.model, messages=MESSAGES, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == whole.choices[0].message.content
    assert usage is not None and usage.completion_tokens == 12


def test_sse_framing_ends_with_done(live_server):
    body = {"model": live_server.model, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{live_server.base_url}/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        assert json.loads(event[len("data: "):])["object"] == "chat.completion.chunk"


def test_completions_n_seed_logprobs_stop(openai_client, live_server):
    reply = openai_client.completions.create(
        model=live_server.model, prompt="Once upon a time", max_tokens=6, n=2, temperature=1.0,
        seed=7, logprobs=3)
    assert len(reply.choices) == 2
    assert len(reply.choices[0].logprobs.top_logprobs[0]) >= 3
    again = openai_client.completions.create(
        model=live_server.model, prompt="Once upon a time", max_tokens=6, n=2, temperature=1.0,
        seed=7, logprobs=3)
    assert [c.text for c in again.choices] == [c.text for c in reply.choices]

    greedy = openai_client.completions.create(model=live_server.model, prompt="Once upon a time",
                                              max_tokens=8, temperature=0)
    text = greedy.choices[0].text
    stop = text[2:4]
    assert stop.strip(), "need a non-blank stop string from the model's own output"
    stopped = openai_client.completions.create(model=live_server.model, prompt="Once upon a time",
                                               max_tokens=8, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stop not in stopped.choices[0].text


def test_top_p_and_temperature_are_accepted(openai_client, live_server):
    reply = openai_client.chat.completions.create(model=live_server.model, messages=MESSAGES,
                                                  max_tokens=3, temperature=0.7, top_p=0.9)
    assert reply.usage.completion_tokens == 3


@pytest.mark.parametrize("kwargs, param_hint", [
    ({"temperature": -1}, "temperature"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"n": 2}, "n"),  # n > 1 with greedy sampling
])
def test_bad_parameters_are_400(openai_client, live_server, kwargs, param_hint):
    args = {"temperature": 0} | kwargs
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model=live_server.model, messages=MESSAGES, **args)
    assert err.value.status_code == 400
    assert err.value.body["message"]


def test_unknown_model_is_404(openai_client):
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert "no-such-model" in err.value.body["message"]


def test_bad_key_is_401(live_server):
    from openai import OpenAI

    client = OpenAI(base_url=live_server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_body_too_large_is_413(live_server):
    huge = {"model": live_server.model, "messages": [{"role": "user", "content": "x" * 300_000}]}
    response = httpx.post(f"{live_server.base_url}/chat/completions", json=huge, timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_malformed_json_is_400_with_openai_body(live_server):
    response = httpx.post(f"{live_server.base_url}/chat/completions", content=b"{not json",
                          headers={"Authorization": f"Bearer {API_KEY}",
                                   "Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}


def test_context_too_long_is_400(openai_client, live_server):
    with pytest.raises(openai.BadRequestError):
        openai_client.completions.create(model=live_server.model, prompt="word " * 2000, max_tokens=4)
