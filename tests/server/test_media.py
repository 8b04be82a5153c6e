"""Images and audio in chat on the real server (Ray Serve + vLLM with prompt embeddings), with the official
openai client: served answers equal a transformers reference built from LLaVA-1.5's definition
and APT's (fp32, greedy), streaming equals non-streaming, mixed batches (text, image, audio, LoRA) equal their
unbatched answers, and bad media are 400s with OpenAI's error body."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest

from floe.adapters.audio import model as audio
from floe.adapters.vision import model as vision
from floe.server.runtime.model import base_fingerprint
from tests.server.live import make_adapter

pytestmark = pytest.mark.slow
MAX_TOKENS = 8


def png(seed: int, size: int = 40) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_chat(url: str, text: str = "What is in the picture?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def wav(freq: float, seconds: float = 0.6, rate: int = 16000) -> str:
    """A base64 WAV of a sine tone."""
    from floe.adapters.audio.decode import wav_bytes

    t = np.arange(int(seconds * rate)) / rate
    return base64.b64encode(wav_bytes(0.3 * np.sin(2 * np.pi * freq * t), rate)).decode()


def audio_chat(data: str, text: str = "What was said?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
                                         {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def seen(live_server, admin):
    """A seeded tiny vision adapter (CLIP tower + projector) and a LoRA, registered once."""
    root = live_server.adapter_root
    vision.write(root / "tiny-vision", llm_hidden=vision.llm_width(live_server.model_dir),
                 base_fingerprint=base_fingerprint(live_server.model_dir), seed=5)
    audio.write(root / "tiny-audio", live_server.model_dir, seed=7)
    for name, source in (("tiny-vision", root / "tiny-vision"), ("tiny-audio", root / "tiny-audio"),
                         ("media-lora", make_adapter(root, "media-lora", live_server.model_dir, seed=61))):
        reply = admin.post("/v1/adapters", json={"name": name, "source": str(source)})
        assert reply.status_code in (200, 201), reply.text
    return root / "tiny-vision"


def _answer(client, model: str, messages: list[dict], stream: bool = False) -> str:
    kwargs = dict(model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    if not stream:
        return client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = client.chat.completions.create(**kwargs, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _reference(live_server, adapter_dir, messages) -> str:
    _, text = vision.reference_generate(live_server.model_dir, adapter_dir, messages, max_tokens=MAX_TOKENS)
    return text


def test_image_chat_equals_the_llava_reference_streamed_or_not(live_server, openai_client, seen):
    messages = image_chat(png(1))
    want = _reference(live_server, seen, messages)
    assert _answer(openai_client, "tiny-vision", messages) == want
    assert _answer(openai_client, "tiny-vision", messages, stream=True) == want


def test_audio_chat_equals_the_apt_reference_streamed_or_not(live_server, openai_client, seen):
    from transformers import AutoTokenizer

    messages = audio_chat(wav(330.0))
    ids = audio.reference_tokens(live_server.model_dir, live_server.adapter_root / "tiny-audio", messages,
                                 max_tokens=MAX_TOKENS)
    want = AutoTokenizer.from_pretrained(live_server.model_dir).decode(ids, skip_special_tokens=True)
    assert _answer(openai_client, "tiny-audio", messages) == want
    assert _answer(openai_client, "tiny-audio", messages, stream=True) == want


def test_same_image_same_answer_different_images_differ(live_server, openai_client, seen):
    first = [_top_logprobs(openai_client, png(seed)) for seed in (2, 2, 3)]
    assert first[0] == first[1]
    assert first[0] != first[2]  # other pixels -> other soft tokens -> another distribution


def _top_logprobs(client, url: str) -> list[tuple[str, float]]:
    reply = client.chat.completions.create(model="tiny-vision", messages=image_chat(url), max_tokens=1,
                                           temperature=0, logprobs=True, top_logprobs=5)
    return [(t.token, round(t.logprob, 4)) for t in reply.choices[0].logprobs.content[0].top_logprobs]


def test_mixed_batch_of_text_image_and_lora_equals_unbatched(live_server, openai_client, seen):
    text = [{"role": "user", "content": "Tell me about boats."}]
    jobs = [(live_server.model, text), ("media-lora", text), ("tiny-vision", image_chat(png(4))),
            ("tiny-audio", audio_chat(wav(440.0))), ("tiny-vision", image_chat(png(5), "Describe it.")),
            ("tiny-audio", audio_chat(wav(220.0), "Repeat it.")), (live_server.model, text)]
    alone = [_answer(openai_client, model, messages) for model, messages in jobs]
    barrier = threading.Barrier(len(jobs))

    def together(job):
        barrier.wait()
        return _answer(openai_client, *job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        assert list(pool.map(together, jobs)) == alone
    assert alone[2] == _reference(live_server, seen, jobs[2][1])


@pytest.mark.parametrize("model, part, code", [
    ("tiny", {"type": "image_url", "image_url": {"url": png(6)}}, "unsupported_media"),
    ("media-lora", {"type": "image_url", "image_url": {"url": png(6)}}, "unsupported_media"),
    ("tiny-vision", {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}},
     "invalid_image"),
    ("tiny-vision", {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
     "media_url_not_allowed"),
    ("tiny-vision", {"type": "image_url", "image_url": {"url": "data:image/png,raw"}}, "invalid_media"),
    ("tiny-vision", {"type": "input_audio", "input_audio": {"data": wav(300.0), "format": "wav"}},
     "unsupported_media"),
    ("tiny-audio", {"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv", "format": "wav"}},
     "invalid_audio"),
])
def test_bad_media_is_a_400_naming_the_part(openai_client, seen, model, part, code):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(
            model=model, max_tokens=2, messages=[{"role": "user", "content": [part, {"type": "text", "text": "x"}]}])
    error = info.value.body
    assert error["code"] == code, error
    assert error["param"].startswith("messages[0].content[0]")


def test_models_say_their_kind(openai_client, seen):
    kinds = {m.id: m.model_extra.get("kind") for m in openai_client.models.list().data}
    assert kinds["tiny"] == "base" and kinds["tiny-vision"] == "vision" and kinds["media-lora"] == "lora"
    assert kinds["tiny-audio"] == "audio"
