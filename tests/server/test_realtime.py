"""Realtime speech on the real server (Ray Serve: Gateway websocket -> SessionRuntime), with the
official openai realtime client, unmodified: manual commit answers with audio and response.done,
equal to the plain-transformers reference of the same adapter; server VAD answers a spoken turn
(espeak-ng) on its own; speech during an answer cancels it; 8 concurrent sessions (one batched
forward per tick) each equal their reference; bad input is an `error` event; the audio routes
answer in OpenAI's shapes."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import subprocess
import wave

import httpx
import numpy as np
import pytest

from floe.adapters.speech import SpeechConfig
from floe.adapters.speech import model as speech
from tests.server.live import API_KEY

pytestmark = pytest.mark.slow
NAME = "rt-speech"
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def adapter(live_server, admin):
    directory = speech.write(live_server.adapter_root / NAME, live_server.model_dir, seed=9,
                             cfg=SpeechConfig(llm_hidden=speech.llm_width(live_server.model_dir),
                                              griffin_lim_iters=4, phrase_tokens=4, max_response_tokens=48))
    reply = admin.post("/v1/adapters", json={"name": NAME, "source": str(directory)})
    assert reply.status_code in (200, 201), reply.text
    return directory


@pytest.fixture(scope="module")
def reference(llm, adapter):
    from floe.adapters.speech.reference import reference_turn
    from floe.adapters.speech.session import load_for_serving

    loaded = load_for_serving(adapter, llm)
    return lambda pcm24: reference_turn(llm, loaded, to_16k(pcm24), max_tokens=MAX_TOKENS)


def to_16k(pcm24: bytes) -> np.ndarray:
    import soxr

    x = np.frombuffer(pcm24, dtype="<i2").astype(np.float32) / 32768.0
    return soxr.resample(x, 24000, 16000).astype(np.float32)


def noise_pcm(seconds: float, seed: int) -> bytes:
    x = 0.1 * np.random.default_rng(seed).standard_normal(int(24000 * seconds))
    return (x * 32767).astype("<i2").tobytes()


def spoken_pcm(text: str, silence_s: float = 1.2) -> bytes:
    """espeak-ng saying `text`, at 24 kHz PCM16, then silence."""
    import soxr

    exe = shutil.which("espeak-ng")
    assert exe, "espeak-ng is installed by the Makefile"
    wav = subprocess.run([exe, "-v", "en-us", "-s", "150", "--stdout", text], check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate, frames = w.getframerate(), w.readframes(w.getnframes())
    x = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    y = soxr.resample(x, rate, 24000)
    y = np.concatenate([np.zeros(4800, np.float32), y, np.zeros(int(24000 * silence_s), np.float32)])
    return (np.clip(y, -1, 1) * 32767).astype("<i2").tobytes()


def client(live_server):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=live_server.base_url, api_key=API_KEY, max_retries=0)


async def append(conn, pcm: bytes, chunk_ms: int = 100) -> None:
    step = 48 * chunk_ms
    for i in range(0, len(pcm), step):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + step]).decode())


async def until(conn, last: str, timeout: float = 240) -> list:
    events = []

    async def collect():
        async for event in conn:
            events.append(event)
            if event.type == last:
                return

    await asyncio.wait_for(collect(), timeout)
    return events


def audio_of(events) -> bytes:
    return b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")


def transcript_of(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")


async def manual_turn(live_server, pcm: bytes, max_tokens: int = MAX_TOKENS) -> list:
    async with client(live_server).realtime.connect(model=NAME) as conn:
        created = await until(conn, "session.created")
        assert created[-1].session.audio.input.format.rate == 24000
        await conn.session.update(session={"type": "realtime", "max_output_tokens": max_tokens,
                                           "audio": {"input": {"turn_detection": None}}})
        await until(conn, "session.updated")
        await append(conn, pcm)
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        return await until(conn, "response.done")


def test_manual_commit_answers_with_audio_equal_to_the_reference(live_server, adapter, reference):
    pcm = noise_pcm(0.9, seed=1)
    events = asyncio.run(manual_turn(live_server, pcm))
    types = [e.type for e in events]
    for name in ("input_audio_buffer.committed", "conversation.item.added", "response.created",
                 "response.output_item.added", "response.content_part.added", "response.output_audio.delta",
                 "response.output_audio_transcript.delta", "response.output_audio.done",
                 "response.output_audio_transcript.done", "response.done"):
        assert name in types, (name, types)
    assert types.index("response.created") < types.index("response.output_audio.delta") < types.index("response.done")
    done = events[-1].response
    ref = reference(pcm)
    assert done.status == ("completed" if len(ref.tokens) < MAX_TOKENS else "incomplete")
    assert transcript_of(events) == ref.transcript
    final = next(e for e in events if e.type == "response.output_audio_transcript.done")
    assert final.transcript == ref.transcript == done.output[0].content[0].transcript
    got = np.frombuffer(audio_of(events), "<i2") / 32767.0
    want = np.concatenate([p.numpy() for p in ref.pcm])
    assert got.shape == want.shape and np.abs(got - want).max() < 2e-2  # Griffin-Lim amplifies ~1e-6


def test_server_vad_answers_a_spoken_turn_on_its_own(live_server, adapter):
    async def run():
        async with client(live_server).realtime.connect(model=NAME) as conn:
            await conn.session.update(session={"type": "realtime", "max_output_tokens": 4, "audio": {"input": {
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 400, "prefix_padding_ms": 200}}}})
            updated = await until(conn, "session.updated")
            assert updated[-1].session.audio.input.turn_detection.type == "server_vad"
            await append(conn, spoken_pcm("what colour is the sky today"))
            return await until(conn, "response.done")

    events = asyncio.run(run())
    types = [e.type for e in events]
    assert types.index("input_audio_buffer.speech_started") < types.index("input_audio_buffer.speech_stopped") \
        < types.index("input_audio_buffer.committed") < types.index("response.created")
    started = next(e for e in events if e.type == "input_audio_buffer.speech_started")
    assert 0 <= started.audio_start_ms < 600  # 200 ms of leading silence, minus the prefix padding
    assert audio_of(events) and events[-1].response.status in ("completed", "incomplete")


def test_speech_during_an_answer_cancels_it(live_server, adapter):
    async def run():
        async with client(live_server).realtime.connect(model=NAME) as conn:
            await conn.session.update(session={"type": "realtime", "max_output_tokens": 48, "audio": {"input": {
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}}})
            await until(conn, "session.updated")
            await append(conn, spoken_pcm("tell me a long story", silence_s=0.6))
            first = await until(conn, "response.created")
            await append(conn, spoken_pcm("stop", silence_s=0.8))  # barge-in
            rest = await until(conn, "response.done")
            after = await until(conn, "response.done")  # the new turn is answered
            return first + rest, after

    events, after = asyncio.run(run())
    done = events[-1].response
    assert done.status == "cancelled" and done.status_details.reason == "client_cancelled"
    types = [e.type for e in events]
    assert types.count("input_audio_buffer.speech_started") == 2
    truncated = next(e for e in events if e.type == "conversation.item.truncated")
    assert truncated.item_id == done.output[0].id
    assert truncated.audio_end_ms == int(len(audio_of(events)) / 48)
    assert after[-1].response.status in ("completed", "incomplete")


def test_eight_concurrent_sessions_each_equal_their_reference(live_server, adapter, reference):
    clips = [noise_pcm(0.3 + 0.1 * i, seed=20 + i) for i in range(8)]

    async def run():
        return await asyncio.gather(*(manual_turn(live_server, pcm) for pcm in clips))

    results = asyncio.run(run())
    for pcm, events in zip(clips, results):
        assert audio_of(events), "every session gets audio"
        assert transcript_of(events) == reference(pcm).transcript
    assert httpx.get(f"{live_server.url}/health", timeout=10).status_code == 200


def test_bad_input_is_an_error_event_and_the_session_goes_on(live_server, adapter):
    import websockets

    async def run():
        url = live_server.base_url.replace("http", "ws") + f"/realtime?model={NAME}"
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            errors = []
            for bad in ("not json", json.dumps([1]), json.dumps({"type": "bogus.event"}),
                        json.dumps({"type": "input_audio_buffer.append", "audio": "***"}),
                        json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}),
                        json.dumps({"type": "input_audio_buffer.commit", "event_id": "mine"}),
                        json.dumps({"type": "response.cancel"}),
                        json.dumps({"type": "conversation.item.create", "item": {}}),
                        json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": {
                            "input": {"format": {"type": "audio/pcmu"}}}}})):
                await ws.send(bad)
                errors.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            cleared = json.loads(await ws.recv())
            return errors, cleared

    errors, cleared = asyncio.run(run())
    assert all(e["type"] == "error" for e in errors), errors
    codes = [e["error"]["code"] for e in errors]
    assert codes[:8] == ["invalid_json", "invalid_event", "unknown_event", "invalid_audio", "invalid_audio",
                         "input_audio_buffer_commit_empty", "response_cancel_not_active", "unsupported_event"]
    assert errors[5]["error"]["event_id"] == "mine"
    assert errors[8]["error"]["param"].startswith("session.audio.input.format")
    assert cleared["type"] == "input_audio_buffer.cleared"


def test_a_bad_handshake_is_an_error_event_then_close(live_server, adapter):
    import websockets

    async def first(model: str, key: str):
        url = live_server.base_url.replace("http", "ws") + f"/realtime?model={model}"
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            event = json.loads(await ws.recv())
            await ws.wait_closed()
            return event, ws.close_code

    for model, key, code in ((NAME, "wrong", "invalid_api_key"), ("no-such-speech", API_KEY, "model_not_found"),
                             (live_server.model, API_KEY, None)):
        event, close = asyncio.run(first(model, key))
        assert event["type"] == "error", event
        if code:
            assert event["error"]["code"] == code, event
        assert close is not None


def test_audio_routes_answer_in_openai_shapes(live_server, adapter, reference, llm, openai_client):
    from floe.adapters.audio.decode import wav_bytes
    from floe.adapters.speech.reference import reference_speech, reference_turn
    from floe.adapters.speech.session import load_for_serving

    pcm16k = (0.1 * np.random.default_rng(5).standard_normal(12000)).astype(np.float32)
    wav = wav_bytes(pcm16k, 16000)
    text = openai_client.audio.transcriptions.create(model=NAME, file=("q.wav", wav, "audio/wav"))
    loaded = load_for_serving(adapter, llm)
    from floe.adapters.audio.decode import load_pcm

    ref = reference_turn(llm, loaded, load_pcm(wav, "wav", "file", 30.0))
    assert text.text == ref.transcript.strip()

    spoken = openai_client.audio.speech.create(model=NAME, input="Hello there, friend.", voice="alloy",
                                               response_format="wav")
    with wave.open(io.BytesIO(spoken.content)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        got = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32767.0
    want = reference_speech(llm, loaded, "Hello there, friend.")
    assert got.shape == want.shape and np.abs(got - want).max() < 2e-2

    with pytest.raises(Exception) as bad:
        openai_client.audio.transcriptions.create(model=NAME, file=("q.ogg", b"OggS", "audio/ogg"))
    assert getattr(bad.value, "status_code", None) == 400
    with pytest.raises(Exception) as base:
        openai_client.audio.speech.create(model=live_server.model, input="hi", voice="alloy")
    assert getattr(base.value, "status_code", None) == 400
