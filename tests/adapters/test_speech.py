"""The `speech` kind (Freeze-Omni) without a server: a streamed spoken turn equals the reference
computed from the method's definition with plain transformers (whole utterance, no KV cache,
greedy, fp32); one batched step over sessions at different positions equals running each
session alone; turns, cancellation, the context bound and the manifest's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from floe.adapters.speech import SessionConfig, SpeechConfig, SpeechKind
from floe.adapters.speech import model as speech
from floe.adapters.speech.reference import reference_turn, run_turn
from floe.adapters.speech.session import Audio, Cancel, Commit, Respond, load_for_serving, open_session, step
from floe.server.kinds import EngineLimits, InvalidAdapter

MAX_TOKENS = 10


@pytest.fixture(scope="module")
def loaded(llm, tiny_dir, tmp_path_factory):
    directory = speech.write(tmp_path_factory.mktemp("speech") / "tiny-speech", tiny_dir, seed=3,
                             cfg=SpeechConfig(llm_hidden=llm.hidden_size, griffin_lim_iters=8, phrase_tokens=4))
    return load_for_serving(directory, llm)


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))).astype(np.float32)


def pcm_of(events: list[dict]) -> list[np.ndarray]:
    return [np.frombuffer(e["pcm"], "<i2") / 32767.0 for e in events if e["type"] == "audio"]


def test_a_streamed_turn_equals_the_reference(llm, loaded):
    pcm = noise(0.9, seed=1)  # not a whole number of 160 ms chunks: the last one is zero-padded
    ref = reference_turn(llm, loaded, pcm, max_tokens=MAX_TOKENS)
    state = open_session(llm, loaded, SessionConfig(max_output_tokens=MAX_TOKENS))
    state.trace = []
    events = run_turn(llm, loaded, state, pcm)
    done = events[-1]
    assert done["type"] == "done" and done["tokens"] == ref.tokens and len(ref.tokens) > 0
    assert done["transcript"] == ref.transcript
    assert [e["tokens"] for e in events if e["type"] == "audio"] == ref.phrases
    assert "".join(e["text"] for e in events if e["type"] == "audio") == ref.transcript
    got = pcm_of(events)
    assert [len(g) for g in got] == [len(r) for r in ref.pcm]
    for served, want in zip(state.trace, ref.states):  # what drives the speech decoder: equal
        torch.testing.assert_close(served, want, atol=1e-4, rtol=1e-4)
    for g, r in zip(got, ref.pcm):
        # NOTE: Griffin-Lim's phase iterations amplify the KV cache's ~1e-6 differences in the states
        assert np.abs(g - r.numpy()).max() < 2e-2
    # the LLM saw exactly: opening, 2 embeddings per chunk, generation prompt, then the answer
    chunks = -(-len(pcm) // loaded.cfg.chunk_samples)
    assert state.inputs.count("a") == len(ref.audio_embeds) == 2 * chunks or state.inputs.count("a") == len(
        ref.audio_embeds)
    status = "completed" if len(ref.tokens) < MAX_TOKENS else "incomplete"
    assert done["status"] == status


def test_one_batched_step_equals_each_session_alone(llm, loaded):
    """Three sessions at different positions (different audio lengths, one already a turn ahead)."""
    clips = [noise(0.5, 11), noise(1.3, 12), noise(0.8, 13)]

    def drive(batched: bool) -> tuple[list[list[dict]], list[list[torch.Tensor]]]:
        states = [open_session(llm, loaded, SessionConfig(max_output_tokens=MAX_TOKENS)) for _ in clips]
        for s in states:
            s.trace = []
        run_turn(llm, loaded, states[2], noise(0.3, 14))  # a turn ahead: a longer cache
        ops = [[Audio(c), Commit(), Respond()] for c in clips]
        events: list[list[dict]] = [[] for _ in clips]
        for _ in range(200):
            if batched:
                out = step(llm, [(loaded, s, o) for s, o in zip(states, ops)])
            else:
                out = [step(llm, [(loaded, s, o)])[0] for s, o in zip(states, ops)]
            ops = [[] for _ in clips]
            for acc, new in zip(events, out):
                acc.extend(new)
            if all(any(e["type"] == "done" for e in acc) for acc in events):
                return events, [s.trace for s in states]
        raise AssertionError("sessions did not finish")

    batched, btrace = drive(True)
    alone, atrace = drive(False)
    for b, a, bt, at in zip(batched, alone, btrace, atrace):
        assert [e["type"] for e in b] == [e["type"] for e in a]
        assert b[-1]["tokens"] == a[-1]["tokens"] and b[-1]["transcript"] == a[-1]["transcript"]
        for x, y in zip(bt, at):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
        assert [len(p) for p in pcm_of(b)] == [len(p) for p in pcm_of(a)]


def test_turns_follow_the_chat_template(llm, loaded):
    state = open_session(llm, loaded, SessionConfig(max_output_tokens=3))
    first = run_turn(llm, loaded, state, noise(0.4, 2))
    second = run_turn(llm, loaded, state, noise(0.4, 3))
    assert first[-1]["type"] == second[-1]["type"] == "done"
    t = state.template
    fed = [int(x[2:]) for x in state.inputs if x != "a"]
    expect = (t.opening + t.to_assistant + first[-1]["tokens"][:-1] + t.assistant_end + t.next_user
              + t.to_assistant + second[-1]["tokens"][:-1])
    if first[-1]["status"] == "completed":
        expect = (t.opening + t.to_assistant + first[-1]["tokens"] + t.assistant_end + t.next_user
                  + t.to_assistant + second[-1]["tokens"])
    assert fed[:len(expect)] == expect


def test_cancel_ends_the_answer_and_the_next_turn_starts(llm, loaded):
    state = open_session(llm, loaded, SessionConfig())
    events = step(llm, [(loaded, state, [Audio(noise(0.3, 4)), Commit(), Respond()])])[0]
    events += step(llm, [(loaded, state, [])])[0]
    events += step(llm, [(loaded, state, [Cancel()])])[0]
    assert events[-1]["type"] == "done" and events[-1]["status"] == "cancelled"
    assert state.response is None
    again = run_turn(llm, loaded, state, noise(0.3, 5))
    assert again[-1]["type"] == "done"
    # a cancel with nothing to cancel is no event; a cancel before the answer started is a cancelled one
    assert step(llm, [(loaded, state, [Cancel()])])[0] == []
    early = step(llm, [(loaded, state, [Respond(), Cancel()])])[0]
    assert early == [{"type": "done", "status": "cancelled", "reason": "client_cancelled", "transcript": ""}]


def test_a_full_context_ends_the_session_with_an_error(llm, loaded):
    state = open_session(llm, loaded, SessionConfig(max_output_tokens=2))
    state.max_context = 30
    events = run_turn(llm, loaded, state, noise(2.0, 6))  # 13 chunks = 26 embeddings, then the prompt
    errors = [e for e in events if e["type"] == "error"]
    assert errors and errors[0]["code"] == "session_context_full"


def test_manifest_refuses_bad_adapters(tiny_dir, tmp_path):
    directory = speech.write(tmp_path / "ok", tiny_dir, seed=1)
    info = SpeechKind().manifest(directory, EngineLimits())
    assert info.kind == "speech" and info.engine == "runtime" and "realtime" in info.serves
    manifest = json.loads((directory / "floe_adapter.json").read_text())
    for change, message in (({"config": {**manifest["config"], "chunk_frames": 12}}, "multiple of 8"),
                            ({"config": {**manifest["config"], "bogus": 1}}, "unknown keys"),
                            ({"base_model": None}, "base_model")):
        (directory / "floe_adapter.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises(InvalidAdapter, match=message):
            SpeechKind().manifest(directory, EngineLimits())
    (directory / "floe_adapter.json").write_text(json.dumps(manifest))
    (directory / "speech.safetensors").unlink()
    with pytest.raises(InvalidAdapter, match="speech.safetensors"):
        SpeechKind().manifest(directory, EngineLimits())


def test_an_adapter_for_another_base_is_refused(llm, tiny_dir, tmp_path):
    directory = speech.write(tmp_path / "other", tiny_dir, seed=1)
    manifest = json.loads((directory / "floe_adapter.json").read_text())
    (directory / "floe_adapter.json").write_text(json.dumps({**manifest, "base_model": "0" * 64}))
    with pytest.raises(InvalidAdapter, match="trained for base"):
        load_for_serving(Path(directory), llm)


def test_the_front_end_resamples_exactly_and_detects_a_spoken_turn():
    import shutil
    import subprocess

    import soxr

    from floe.server.sessions.frontend import Frontend, TurnDetection

    x = (0.2 * np.random.default_rng(0).standard_normal(24000)).astype(np.float32)
    pcm = (x * 32768).astype("<i2").tobytes()
    manual = Frontend(None)
    got = np.concatenate([op.pcm for i in range(0, len(pcm), 960) for op in manual.push(pcm[i:i + 960])[0]])
    whole = soxr.resample(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768, 24000, 16000)
    np.testing.assert_array_equal(got, whole[:len(got)])  # streaming == whole-signal resampling

    assert shutil.which("espeak-ng"), "espeak-ng is installed by the Makefile"
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", "hello there"], check=True,
                         capture_output=True).stdout
    raw = np.frombuffer(wav[44:], "<i2").astype(np.float32) / 32768  # espeak --stdout: 44-byte header, 22.05 kHz
    speech = soxr.resample(raw, 22050, 24000)
    silence = np.zeros(12000, np.float32)
    signal = np.concatenate([silence, speech, silence, silence])
    data = (signal * 32767).astype("<i2").tobytes()
    vad = Frontend(TurnDetection(silence_duration_ms=300, prefix_padding_ms=200))
    ops, events = [], []
    for i in range(0, len(data), 4800):
        o, e = vad.push(data[i:i + 4800])
        ops += o
        events += e
    kinds = [e["type"] for e in events]
    assert kinds == ["speech_started", "speech_stopped", "committed"], kinds
    assert 300 <= events[0]["audio_start_ms"] <= 500  # 500 ms of silence first, 200 ms prefix padding
    names = [type(op).__name__ for op in ops]
    assert names[0] == "Cancel" and names[-2:] == ["Commit", "Respond"]  # barge-in first, then the turn
    heard = sum(len(op.pcm) for op in ops if type(op).__name__ == "Audio")
    assert heard >= len(speech) * 16000 / 24000 * 0.8  # the speech (and its prefix) reached the kind


def test_the_audio_routes_calls_equal_their_references(llm, loaded):
    """What /v1/audio/transcriptions and /v1/audio/speech run on the FrozenRuntime, batched."""
    from types import SimpleNamespace

    from floe.adapters.audio.decode import load_pcm, wav_bytes
    from floe.adapters.speech.reference import reference_speech
    from floe.adapters.speech.session import prepare_call, run_calls
    from floe.server.errors import InvalidRequest
    from floe.server.schemas.audio import SpeechCall, TranscriptionCall

    backbone = SimpleNamespace(llm=llm)
    clips = [noise(0.6, 30), noise(1.1, 31)]
    calls = [TranscriptionCall(wav_bytes(c), "wav", None, 30.0) for c in clips] + [SpeechCall("Hello there, friend.")]
    items = [prepare_call(backbone, loaded, c) for c in calls]
    out = run_calls(backbone, [(loaded, item) for item in items])
    for clip, result in zip(clips, out):
        pcm = load_pcm(wav_bytes(clip), "wav", "t", 30.0)
        assert result.text == reference_turn(llm, loaded, pcm).transcript.strip()
    want = reference_speech(llm, loaded, "Hello there, friend.")
    got = np.frombuffer(out[2].pcm, "<i2") / 32767.0
    assert got.shape == want.shape and np.abs(got - want).max() < 2e-2
    with pytest.raises(InvalidRequest):
        prepare_call(backbone, loaded, TranscriptionCall(b"RIFF....", "wav", None, 30.0))
