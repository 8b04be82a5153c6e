"""The `audio` kind (APT): manifest, decoding, fbank, the chat rewrite against the reference, bad
audio, the trainer, and the demo adapter's held-out accuracy."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from floe.adapters.audio import ALIGNER, AudioConfig, AudioKind, reference
from floe.adapters.audio import decode as audio_decode
from floe.adapters.audio import model as audio_model
from floe.server.config import MediaConfig
from floe.server.engine.messages import OpenAICall
from floe.server.errors import InvalidRequest
from floe.server.kinds import MANIFEST, EngineLimits, InvalidAdapter, inspect_adapter

KIND = AudioKind()


def tone(freq: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * freq * t) * np.minimum(1.0, 20 * t)
    return np.stack([wave * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


def wav(samples: np.ndarray, rate: int) -> bytes:
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(samples.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((samples * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def mp3(samples: np.ndarray, rate: int) -> bytes:
    import lameenc

    enc = lameenc.Encoder()
    enc.set_bit_rate(128)
    enc.set_in_sample_rate(rate)
    enc.set_channels(samples.shape[1])
    enc.set_quality(2)
    return bytes(enc.encode((samples * 32767).astype("<i2").tobytes()) + enc.flush())


def part(data: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


@pytest.fixture(scope="module")
def adapter(tiny_dir, tmp_path_factory):
    return audio_model.write(tmp_path_factory.mktemp("audio") / "tiny-audio", tiny_dir, seed=3)


@pytest.fixture(scope="module")
def loaded(adapter, tiny_dir):
    return audio_model.load_for_serving(adapter, tiny_dir, MediaConfig(max_audio_s=5.0, max_parts=3))


# -- the package and the manifest ----------------------------------------------------------------
def test_the_kind_package_imports_without_torch():
    code = "import sys, floe.adapters.audio, floe.adapters.audio.decode; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_manifest_describes_the_adapter(adapter, tiny_dir):
    from floe.server.runtime.model import base_fingerprint

    info = inspect_adapter(adapter, EngineLimits())
    assert (info.kind, info.engine, info.serves) == ("audio", "llm", ("chat",))
    assert info.base_model == base_fingerprint(tiny_dir)
    assert info.details["tokens_per_clip"] == 1 + info.details["num_queries"]
    assert info.details["llm_hidden"] == 256 and info.details["sample_rate"] == 16000


def _edit(adapter: Path, tmp_path: Path, change) -> Path:
    import shutil

    other = Path(shutil.copytree(adapter, tmp_path / "copy"))
    manifest = json.loads((other / MANIFEST).read_text())
    change(manifest, other)
    (other / MANIFEST).write_text(json.dumps(manifest))
    return other


@pytest.mark.parametrize("change, words", [
    (lambda m, d: m.update(kind="lora"), "kind"),
    (lambda m, d: m.pop("base_model"), "base_model"),
    (lambda m, d: m["config"].update(num_queries=0), "num_queries"),
    (lambda m, d: m["config"].update(qformer_heads=5), "divisible"),
    (lambda m, d: m["config"].update(num_queries=7), "queries has shape"),
    (lambda m, d: (d / ALIGNER).unlink(), ALIGNER),
    (lambda m, d: (d / ALIGNER).write_bytes(b"\xff" * 20), "not a safetensors"),
])
def test_bad_adapter_directories_are_refused(adapter, tmp_path, change, words):
    with pytest.raises(InvalidAdapter, match=words):
        KIND.manifest(_edit(adapter, tmp_path, change), EngineLimits())


def test_load_refuses_another_base_and_another_width(adapter, tiny_dir, tmp_path):
    other = _edit(adapter, tmp_path, lambda m, d: m.update(base_model="f" * 64))
    with pytest.raises(InvalidAdapter, match="trained for base"):
        audio_model.load_for_serving(other, tiny_dir, MediaConfig())
    narrow = audio_model.write(tmp_path / "narrow", tiny_dir, cfg=AudioConfig(
        encoder_dim=16, encoder_heads=2, qformer_dim=16, qformer_heads=2, num_queries=2, max_text_tokens=4,
        llm_hidden=128))
    assert KIND.manifest(narrow, EngineLimits()).details["llm_hidden"] == 128  # consistent in itself
    with pytest.raises(InvalidAdapter, match="hidden size is 256"):
        audio_model.load_for_serving(narrow, tiny_dir, MediaConfig())


# -- decoding and fbank ----------------------------------------------------------------------------
def test_wav_is_downmixed_and_resampled_to_16k():
    from scipy.signal import resample_poly

    stereo = tone(440.0, 0.5, 44100, channels=2)
    pcm = audio_decode.load_pcm(wav(stereo, 44100), "wav", "p", 30.0)
    quantised = np.round(stereo * 32767) / 32768  # what a 16-bit WAV holds, as miniaudio reads it
    want = resample_poly(quantised.mean(1).astype(np.float64), 160, 441).astype(np.float32)
    assert pcm.dtype == np.float32 and pcm.shape == want.shape == (8000,)
    np.testing.assert_allclose(pcm, want, atol=1e-4)
    spectrum = np.abs(np.fft.rfft(pcm))
    assert abs(np.argmax(spectrum) * 16000 / len(pcm) - 440.0) < 4.0


def test_mp3_decodes_to_the_same_sound():
    mono = tone(660.0, 1.0, 22050)
    pcm = audio_decode.load_pcm(mp3(mono, 22050), "mp3", "p", 30.0)
    assert abs(len(pcm) - 16000) < 0.1 * 16000  # encoder delay and padding, no more
    ref = audio_decode.to_mono_16k(mono, 22050)
    lag = int(np.argmax(np.correlate(pcm[:12000], ref[:8000], mode="valid")))
    segment = pcm[lag:lag + 8000]
    assert np.corrcoef(segment, ref[:8000])[0, 1] > 0.98
    spectrum = np.abs(np.fft.rfft(pcm))
    assert abs(np.argmax(spectrum) * 16000 / len(pcm) - 660.0) < 5.0


def test_fbank_equals_kaldi_native_fbank_run_online_in_chunks():
    import kaldi_native_fbank as knf

    pcm = audio_decode.to_mono_16k(tone(300.0, 0.73, 16000) + 0.01, 16000)
    got = audio_decode.fbank(pcm)
    opts = audio_decode.fbank_options()
    d = opts.as_dict()
    assert (d["mel_opts"]["num_bins"], d["frame_opts"]["dither"], d["frame_opts"]["frame_length_ms"],
            d["frame_opts"]["frame_shift_ms"], d["frame_opts"]["samp_freq"]) == (80, 0.0, 25.0, 10.0, 16000.0)
    online = knf.OnlineFbank(opts)
    frames = []
    for start in range(0, len(pcm), 2560):  # 160 ms chunks, frames read as they are ready
        online.accept_waveform(16000.0, (pcm[start:start + 2560] * 32768.0).tolist())
        frames += [online.get_frame(i) for i in range(len(frames), online.num_frames_ready)]
    online.input_finished()
    frames += [online.get_frame(i) for i in range(len(frames), online.num_frames_ready)]
    assert got.shape == (1 + (len(pcm) - 400) // 160, 80)
    np.testing.assert_allclose(got, np.asarray(frames, dtype=np.float32), rtol=0, atol=0)


# -- the chat rewrite and the reference ------------------------------------------------------------
def _body(*clips: bytes) -> dict:
    content = [{"type": "text", "text": "Listen:"}, part(clips[0]), {"type": "text", "text": "and then"}]
    content += [part(c) for c in clips[1:]]
    return {"model": "x", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": content}], "max_tokens": 4}


def _independent_clip(loaded, tiny_dir, pcm: np.ndarray, instruction: str) -> torch.Tensor:
    """The clip's rows from the method's pieces: kaldi-native-fbank, encoder, HF embedding, aligner."""
    import kaldi_native_fbank as knf
    from transformers import AutoTokenizer

    fb = knf.OnlineFbank(audio_decode.fbank_options())
    fb.accept_waveform(16000.0, (pcm * 32768.0).tolist())
    fb.input_finished()
    feats = torch.tensor(np.array([fb.get_frame(i) for i in range(fb.num_frames_ready)]))
    ids = AutoTokenizer.from_pretrained(tiny_dir)(instruction, add_special_tokens=False)["input_ids"]
    table = reference.base_model(str(tiny_dir)).get_input_embeddings().weight
    rows = table[torch.tensor(ids[:loaded.model.cfg.max_text_tokens], dtype=torch.long)]
    with torch.no_grad():
        states, mask = loaded.model.encoder(feats[None], torch.tensor([feats.shape[0]]))
        return loaded.model.aligner(states, mask, rows[None], torch.ones(1, rows.shape[0], dtype=torch.bool))[0]


def test_rewrite_puts_prompt_embeds_where_the_audio_was(loaded, tiny_dir):
    a, b = wav(tone(440.0, 0.4, 22050), 22050), wav(tone(880.0, 0.6, 8000, 2), 8000)
    body = _body(a, b)
    call = OpenAICall(route="chat", body=body, adapter_id="demo@x")
    out = asyncio.run(KIND.rewrite_request(loaded, call))
    assert out.adapter_id == "demo@x" and out.body["max_tokens"] == 4 and body["messages"][1]["content"][1] == part(a)
    content = out.body["messages"][1]["content"]
    assert [p["type"] for p in content] == ["text", "prompt_embeds", "text", "prompt_embeds"]
    n = loaded.model.cfg.tokens_per_clip
    for data, idx in ((a, 1), (b, 3)):
        got = torch.load(io.BytesIO(base64.b64decode(content[idx]["data"])), weights_only=True)
        assert got.dtype == torch.float32 and got.shape == (n, 256)
        want = _independent_clip(loaded, tiny_dir, audio_decode.load_pcm(data, "wav", "p", 5.0), "Listen:\nand then")
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[0], loaded.model.aligner.indicator)
    text_only = OpenAICall(route="chat", body={"messages": [{"role": "user", "content": "hi"}]})
    passed = asyncio.run(KIND.rewrite_request(loaded, text_only))  # text only: unchanged, sent to the base
    assert passed.body == {**text_only.body, "model": loaded.served_name}


def test_reference_sequence_places_the_clips_in_the_turn(loaded, tiny_dir):
    a, b = wav(tone(440.0, 0.4, 22050), 22050), wav(tone(880.0, 0.6, 8000, 2), 8000)
    body = _body(a, b)
    embeds, ids = audio_model.reference_inputs_embeds(tiny_dir, loaded, body["messages"])
    rewritten = audio_model.embed_messages(loaded, body["messages"])
    embeds2, ids2 = audio_model.reference_inputs_embeds(tiny_dir, loaded, rewritten)
    assert ids == ids2
    torch.testing.assert_close(embeds, embeds2, atol=0, rtol=0)
    tokenizer, pid = reference.placeholder_tokenizer(tiny_dir)
    n = loaded.model.cfg.tokens_per_clip
    text = tokenizer.decode(ids)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nListen:" + "<prompt_embeds>" * n
                    + "and then" + "<prompt_embeds>" * n + "<|im_end|>\n<|im_start|>assistant\n")
    table = reference.base_model(str(tiny_dir)).get_input_embeddings().weight
    clips = reference.clip_tensors(loaded, rewritten)
    at = [k for k, t in enumerate(ids) if t == pid]
    torch.testing.assert_close(embeds[0, at], torch.cat(clips))
    plain = [k for k, t in enumerate(ids) if t != pid]
    torch.testing.assert_close(embeds[0, plain], table[torch.tensor([ids[k] for k in plain])])


def test_reference_equals_the_sequence_vllms_own_renderer_builds(loaded, tiny_dir):
    """vLLM 0.32's chat renderer (no engine) on the rewritten request: the same ids, the same rows."""
    from vllm.config import ModelConfig, VllmConfig
    from vllm.renderers.params import ChatParams
    from vllm.renderers.registry import renderer_from_config

    body = _body(wav(tone(500.0, 0.3, 16000), 16000), wav(tone(700.0, 0.3, 16000), 16000))
    rewritten = audio_model.embed_messages(loaded, body["messages"])
    # NOTE: dtype "auto" is bfloat16 on this CPU; the fp32 reference needs an fp32 engine.
    config = ModelConfig(model=str(tiny_dir), enable_prompt_embeds=True, dtype="float32")
    renderer = renderer_from_config(VllmConfig(model_config=config))
    _, prompt = renderer.render_messages(rewritten, ChatParams(chat_template_kwargs={"add_generation_prompt": True}))
    embeds, ids = audio_model.reference_inputs_embeds(tiny_dir, loaded, body["messages"])
    assert prompt["prompt_token_ids"] == ids
    _, pid = reference.placeholder_tokenizer(tiny_dir)
    assert prompt["prompt_is_token_ids"] == [t != pid for t in ids]
    spliced = [k for k, t in enumerate(ids) if t == pid]
    torch.testing.assert_close(prompt["prompt_embeds"][spliced], embeds[0, spliced], atol=0, rtol=0)


def test_reference_tokens_equal_the_training_evaluation_path(loaded, tiny_dir):
    from floe.adapters.audio.evaluate import greedy
    from floe.adapters.audio.train import Preparer, load_llm

    clip = wav(tone(440.0, 0.5, 16000), 16000)
    messages = [{"role": "user", "content": [part(clip), {"type": "text", "text": "What is it?"}]}]
    tokens = audio_model.reference_tokens(tiny_dir, loaded, messages, max_tokens=6)
    assert tokens == audio_model.reference_tokens(tiny_dir, loaded, messages, max_tokens=6) and tokens
    llm, table = load_llm(tiny_dir)
    prep = Preparer(tiny_dir, loaded.model)
    example = prep(messages + [{"role": "assistant", "content": "x"}])
    assert greedy(llm, loaded.model, table, prep.pid, example, prep.eos, max_new_tokens=6) == tokens


# -- bad audio ----------------------------------------------------------------------------------
_P = "messages[1].content[1].input_audio"


@pytest.mark.parametrize("bad, param, code", [
    ({"data": base64.b64encode(b"RIFF" + b"\x00" * 60).decode(), "format": "wav"}, _P, "invalid_audio"),
    ({"data": base64.b64encode(b"\xff\xfb garbage" * 30).decode(), "format": "mp3"}, _P, "invalid_audio"),
    ({"data": "UklGRg==", "format": "flac"}, _P + ".format", "unsupported_audio_format"),
    ({"data": "UklGRg==", "format": None}, _P + ".format", "unsupported_audio_format"),
    ({"data": "not base64!", "format": "wav"}, _P + ".data", "invalid_media"),
    ({"format": "wav"}, _P, "invalid_audio"),
    ({"data": base64.b64encode(wav(tone(300, 6.0, 8000), 8000)).decode(), "format": "wav"}, _P, "audio_too_long"),
    ({"data": base64.b64encode(wav(tone(300, 0.01, 16000), 16000)).decode(), "format": "wav"}, _P, "invalid_audio"),
])
def test_bad_audio_is_a_400_naming_the_part(loaded, bad, param, code):
    body = {"messages": [{"role": "system", "content": "s"},
                         {"role": "user", "content": [{"type": "text", "text": "t"},
                                                      {"type": "input_audio", "input_audio": bad}]}]}
    with pytest.raises(InvalidRequest) as err:
        asyncio.run(KIND.rewrite_request(loaded, OpenAICall(route="chat", body=body)))
    assert (err.value.status, err.value.param, err.value.code) == (400, param, code)


def test_too_many_audio_parts_and_too_large_media(loaded):
    clip = wav(tone(300, 0.1, 16000), 16000)
    body = {"messages": [{"role": "user", "content": [part(clip)] * 4}]}
    with pytest.raises(InvalidRequest) as err:
        audio_model.embed_messages(loaded, body["messages"])
    assert (err.value.param, err.value.code) == ("messages", "too_many_media_parts")
    small = audio_model.LoadedAudio(loaded.model, loaded.tokenizer, loaded.rows, 100, 5.0, 3)
    with pytest.raises(InvalidRequest) as err:
        audio_model.embed_messages(small, [{"role": "user", "content": [part(clip)]}])
    assert (err.value.param, err.value.code) == ("messages[0].content[0].input_audio.data", "media_too_large")


# -- the trainer and the demo ------------------------------------------------------------------------
def test_training_labels_are_the_target_tokens_at_their_expanded_positions(loaded, tiny_dir):
    from floe.adapters.audio.train import Preparer, batch_inputs, load_llm

    llm, table = load_llm(tiny_dir)
    prep = Preparer(tiny_dir, loaded.model)
    clip = part(wav(tone(440.0, 0.3, 16000), 16000))
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hear"}, clip, clip]},
                {"role": "assistant", "content": "a red cat"}]
    example = prep(messages)
    embeds, mask, labels = batch_inputs(loaded.model, table, prep.pid, [example, prep(messages[:1] + [
        {"role": "assistant", "content": "no"}])])
    want, ids = audio_model.reference_inputs_embeds(tiny_dir, loaded, messages[:1])
    n = len(ids)
    torch.testing.assert_close(embeds[0, :n], want[0], atol=1e-5, rtol=1e-5)  # training sees what serving sees
    target = [int(t) for t in labels[0] if t != -100]
    assert prep.tokenizer.decode(target) == "a red cat<|im_end|>"
    assert [k for k, t in enumerate(labels[0].tolist()) if t != -100] == list(range(n, n + len(target)))
    assert int(mask[0].sum()) == n + len(target) and labels[1, int(mask[1].sum()):].eq(-100).all()


def test_trainer_writes_an_adapter_the_kind_accepts(tiny_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from floe.adapters.audio.cli import train_audio

    (tmp_path / "clips").mkdir()
    lines = []
    for k, (freq, word) in enumerate([(300, "low"), (900, "high")] * 4):
        name = f"clips/{k}.wav"
        (tmp_path / name).write_bytes(wav(tone(freq, 0.3, 16000), 16000))
        audio = {"type": "input_audio", "input_audio": {"path": name}} if k % 2 else part(wav(tone(freq, 0.3, 16000),
                                                                                             16000))
        lines.append(json.dumps({"messages": [{"role": "user", "content": [audio, {"type": "text", "text": "Pitch?"}]},
                                              {"role": "assistant", "content": word}]}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    app = typer.Typer()
    app.command()(train_audio)
    out = tmp_path / "trained"
    result = CliRunner().invoke(app, ["--data", str(tmp_path / "train.jsonl"), "--out", str(out), "--epochs", "2",
                                      "--num-queries", "4", "--qformer-dim", "32", "--model", str(tiny_dir)])
    assert result.exit_code == 0, result.output
    info = inspect_adapter(out, EngineLimits())
    assert info.kind == "audio" and info.details["num_queries"] == 4
    assert json.loads((out / MANIFEST).read_text())["training"]["val_examples"] == 1
    audio_model.load_for_serving(out, tiny_dir, MediaConfig())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "no audio"}, {"role": "assistant", "content": "x"}]}\n')
    result = CliRunner().invoke(app, ["--data", str(bad), "--out", str(tmp_path / "x"), "--model", str(tiny_dir)])
    assert result.exit_code == 2 and "no input_audio" in result.output


@pytest.fixture(scope="module")
def demo_adapter(tiny_dir):
    """The demo, built once per version of its code and base (as `floe serve` caches it)."""
    import os

    from floe.adapters.audio import demo
    from floe.server.runtime.model import base_fingerprint

    source = "".join(p.read_text() for p in sorted(Path(demo.__file__).parent.glob("*.py")))
    key = hashlib.sha256((source + base_fingerprint(tiny_dir)).encode()).hexdigest()[:12]
    target = Path(os.environ["FLOE_CACHE_DIR"]) / "test-audio-demo" / key
    if not (target / MANIFEST).is_file():
        demo.build(tiny_dir, target)
    return target


@pytest.mark.slow
def test_demo_adapter_names_held_out_words_far_above_chance(demo_adapter):
    from floe.adapters.audio.demo import report

    assert KIND.manifest(demo_adapter, EngineLimits()).kind == "audio"
    r = report(demo_adapter)
    print(f"\naudio demo, {r['held_out_clips']} held-out clips (voices {r['held_out_voices']}, speeds "
          f"{r['held_out_speeds']}): ranked accuracy {r['held_out_ranked_accuracy']:.1%}, greedy exact match "
          f"{r['held_out_accuracy']:.1%}, chance {r['chance']:.1%}")
    # NOTE: chance is 1/12; 72 clips at chance give 6 +- 2.3 hits, so 50% (36 hits) is > 12 sd above it.
    assert r["held_out_ranked_accuracy"] >= 0.5
    assert r["held_out_ranked_accuracy_untrained_aligner"] < r["held_out_ranked_accuracy"] - 0.3  # APT training did it
    assert 0.0 <= r["held_out_accuracy"] <= 1.0  # reported; the tiny random base decides it (see demo.py)
