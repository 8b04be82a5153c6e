"""Freeze-Omni's released checkpoint layout as a `speech` adapter (adapters/speech/freeze_omni.py).

The checkpoint is tiny and random, written here in exactly the release's layout: its files,
its config keys, its tensor names (spelled out below, independently of the loader's tables),
its CMVN format, weight-normed codec convolutions, the decoder's {"model": ...} wrapper. Sizes
are scaled down; the base is floe's built-in tiny one (width 256), with the release's 4 LLM
inputs per decoder row (256 / 64, as 3584 / 896)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from floe.adapters.audio.decode import fbank, wav_bytes
from floe.adapters.speech import SessionConfig, SpeechKind
from floe.adapters.speech.reference import reference_speech, reference_turn, run_turn
from floe.adapters.speech.session import open_session, prepare_call, run_calls
from floe.server.kinds import EngineLimits, InvalidAdapter, detect_kind, inspect_adapter
from floe.server.schemas.audio import SpeechCall, TranscriptionCall

BINS, SUB, DIM, HEADS, FFN, LAYERS, LEFT = 80, 24, 64, 4, 96, 2, 2
KERNEL, PROMPT, STATES = 5, 3, 4
DEC, DEC_HEADS, DEC_FFN, DEC_LAYERS, CODES = 64, 4, 96, 2, 32
CODEC = {"resblock": "1", "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3, 5]],
         "upsample_rates": [4, 3], "upsample_kernel_sizes": [8, 5], "upsample_initial_channel": 256,
         "n_codes": CODES, "n_code_groups": 1, "residul_layer": 1, "global_code_num": 4,
         "global_tokens": [1, 5, 9, 30], "codebook_loss_lambda": 1.0, "commitment_loss_lambda": 0.25,
         "global_feature_conv": [128, 64, 128, 3, 1], "sampling_rate": 24000}
SAMPLES_PER_CODE = 12  # prod(upsample_rates)
CHAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<audio><|im_end|>\n"
        "<|im_start|>assistant\n")


def train_yaml(llm_width: int, dim: int) -> dict:
    return {
        "input_dim": BINS, "output_dim": 100, "is_json_cmvn": False, "cmvn_file": "global_cmvn",
        "encoder_conf": {
            "overview_conf": {"encoder-input-dim": BINS, "encoder-output-dim": dim,
                              "encoder-layer-config": "subsampling-transformer"},
            "para_conf": {
                "subsampling": {"subsampling-rate": 4, "subsampling-input-dim": BINS, "subsampling-output-dim": SUB,
                                "subsampling-dropout-rate": 0.1},
                "transformer": {"transformer-input-dim": SUB, "transformer-output-dim": dim,
                                "transformer-attention-dim": dim, "transformer-attention-heads": HEADS,
                                "transformer-linear-units": FFN, "transformer-num-blocks": LAYERS,
                                "transformer-dropout-rate": 0.1, "transformer-attention-dropout-rate": 0.0,
                                "transformer-positional-dropout-rate": 0.1, "transformer-input-layer": "linear",
                                "transformer-pos-enc-class": "rel-enc", "transformer-normalize-before": True,
                                "transformer-concat-after": False, "transformer-positionwise-layer-type": "linear",
                                "transformer-chunk_size": 4, "transformer-left_chunks": LEFT,
                                "transformer-dynamic-chunks": False}}},
        "model_conf": {"freeze_llm": True, "enc_out_dim": dim, "llm_embed_dim": llm_width, "kernel_size": KERNEL,
                       "adpter_type": "subsampling", "add_audio_bos_eos": True, "task_num": 20, "prompt_finetune": True,
                       "add_prompt_before": True, "prompt_num": PROMPT, "llm_head_num": 4, "num_key_value_heads": 2,
                       "task_type": "prompt", "freeze_encoder": True, "freeze_adpter": True,
                       "activation_func": "gelu", "norm": "layer", "chat_template": CHAT,
                       "predict_usr_state": STATES, "chunk_size": 16},
        "optim": "adamw", "dataset_conf": {"batch_size": 4}}


def audiollm_tensors(g: torch.Generator, llm_width: int, dim: int) -> dict[str, torch.Tensor]:
    r = lambda *shape: 0.1 * torch.randn(*shape, generator=g)  # noqa: E731
    one = lambda n: 1.0 + r(n)  # noqa: E731
    t = {"encoder.enc.0.core.conv.0.weight": r(SUB, 1, 3, 3), "encoder.enc.0.core.conv.0.bias": r(SUB),
         "encoder.enc.0.core.conv.2.weight": r(SUB, SUB, 3, 3), "encoder.enc.0.core.conv.2.bias": r(SUB),
         "encoder.enc.0.core.out.0.weight": r(SUB, SUB * 19), "encoder.enc.0.core.out.0.bias": r(SUB),
         "encoder.enc.1.embed.0.weight": r(dim, SUB), "encoder.enc.1.embed.0.bias": r(dim),
         "encoder.enc.1.embed.1.weight": one(dim), "encoder.enc.1.embed.1.bias": r(dim),
         "encoder.enc.1.after_norm.weight": one(dim), "encoder.enc.1.after_norm.bias": r(dim)}
    for i in range(LAYERS):
        a = f"encoder.enc.1.encoders.{i}."
        for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
            t[f"{a}self_attn.{name}.weight"], t[f"{a}self_attn.{name}.bias"] = r(dim, dim), r(dim)
        t[f"{a}self_attn.linear_pos.weight"] = r(dim, dim)
        t[f"{a}self_attn.pos_bias_u"], t[f"{a}self_attn.pos_bias_v"] = r(HEADS, dim // HEADS), r(HEADS, dim // HEADS)
        t[f"{a}feed_forward.w_1.weight"], t[f"{a}feed_forward.w_1.bias"] = r(FFN, dim), r(FFN)
        t[f"{a}feed_forward.w_2.weight"], t[f"{a}feed_forward.w_2.bias"] = r(dim, FFN), r(dim)
        for norm in ("norm1", "norm2"):
            t[f"{a}{norm}.weight"], t[f"{a}{norm}.bias"] = one(dim), r(dim)
    if dim * 4 < llm_width:  # enc_out_dim * 4 < llm_embed_dim: two convolutions, BatchNorm
        t.update({"adpter.conv1d1.weight": r(2 * dim, dim, KERNEL), "adpter.conv1d1.bias": r(2 * dim),
                  "adpter.conv1d2.weight": r(4 * dim, 2 * dim, KERNEL), "adpter.conv1d2.bias": r(4 * dim),
                  "adpter.project.weight": r(llm_width, 4 * dim), "adpter.project.bias": r(llm_width)})
        for bn, n in (("bn1", 2 * dim), ("bn2", 4 * dim)):
            t.update({f"adpter.{bn}.weight": one(n), f"adpter.{bn}.bias": r(n), f"adpter.{bn}.running_mean": r(n),
                      f"adpter.{bn}.running_var": 1.0 + r(n).abs(),
                      f"adpter.{bn}.num_batches_tracked": torch.tensor(1000)})
    else:
        t.update({"adpter.conv1d2.weight": r(2 * dim, dim, KERNEL), "adpter.conv1d2.bias": r(2 * dim),
                  "adpter.bn2.weight": one(2 * dim), "adpter.bn2.bias": r(2 * dim),
                  "adpter.project.weight": r(llm_width, 2 * dim), "adpter.project.bias": r(llm_width)})
    t.update({"prompt_embeddings.weight": r(PROMPT, llm_width), "task_embeddings.weight": r(20, llm_width),
              "predictor_head.weight": r(STATES, llm_width), "predictor_head.bias": r(STATES),
              "llm_decoder.lm_head.weight": r(8, llm_width)})  # a frozen-LLM tensor: the base's, not read
    return t


def decoder_tensors(g: torch.Generator) -> dict[str, torch.Tensor]:
    r = lambda *shape: 0.1 * torch.randn(*shape, generator=g)  # noqa: E731
    t = {"embedding.weight": r(CODES + 4, DEC), "norm.weight": 1.0 + r(DEC), "out_fnn.weight": r(CODES + 4, DEC),
         "out_fnn.bias": torch.zeros(CODES + 4)}
    t["out_fnn.bias"][7], t["out_fnn.bias"][CODES + 2] = 2.0, 1.0  # top-2 {7, eos}: phrases of ~3 codes
    for stack, n in (("layers_pre_nn", DEC_LAYERS // 2), ("layers", DEC_LAYERS), ("layers_prefix", DEC_LAYERS)):
        for i in range(n):
            a = f"{stack}.{i}."
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                t[f"{a}self_attn.{name}.weight"] = r(DEC, DEC)
            t[f"{a}mlp.gate_proj.weight"], t[f"{a}mlp.up_proj.weight"] = r(DEC_FFN, DEC), r(DEC_FFN, DEC)
            t[f"{a}mlp.down_proj.weight"] = r(DEC, DEC_FFN)
            t[f"{a}input_layernorm.weight"], t[f"{a}post_attention_layernorm.weight"] = 1.0 + r(DEC), 1.0 + r(DEC)
    return t


def codec_tensors(g: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    r = lambda *shape: 0.05 * torch.randn(*shape, generator=g)  # noqa: E731

    def normed(prefix: str, shape: tuple[int, ...], out: int) -> dict[str, torch.Tensor]:  # weight_norm(dim=0)
        return {f"{prefix}.weight_g": 1.0 + r(shape[0], 1, 1).abs(), f"{prefix}.weight_v": r(*shape),
                f"{prefix}.bias": r(out)}

    c = CODEC["upsample_initial_channel"]
    gen = normed("conv_pre", (c, 512, 7), c)
    for i, k in enumerate(CODEC["upsample_kernel_sizes"]):
        gen.update(normed(f"ups.{i}", (c // 2 ** i, c // 2 ** (i + 1), k), c // 2 ** (i + 1)))
        ch = c // 2 ** (i + 1)
        for j in range(3):
            gen.update(normed(f"resblocks.{i}.convs1.{j}", (ch, ch, 3), ch))
            gen.update(normed(f"resblocks.{i}.convs2.{j}", (ch, ch, 3), ch))
    gen.update(normed("conv_post", (1, c // 4, 7), 1))
    quantizer = {"quantizer_modules.0.embedding.weight": r(CODES, 512)}
    for j in range(CODEC["global_code_num"]):
        quantizer[f"quantizer_modules_globaltokens.{j}.embedding.weight"] = r(CODES, 128 // CODEC["global_code_num"])
    return {"generator": gen, "quantizer": quantizer, "encoder": {"conv_pre.weight_v": r(32, 1, 7)}, "steps": 1000}


CMVN_COUNT = 10.0  # Kaldi's stats: per bin the sum and the sum of squares over CMVN_COUNT frames
CMVN_SUMS = [CMVN_COUNT * (8.0 + i % 7) for i in range(BINS)]
CMVN_SQUARES = [CMVN_COUNT * ((1.0 + 0.25 * i) + (8.0 + i % 7) ** 2) for i in range(BINS)]


def write_release(root: Path, llm_width: int, seed: int = 0, dim: int = DIM) -> Path:
    """A tiny random Freeze-Omni checkpoint in the released layout: `root`/checkpoints/... (with
    dim * 4 < llm_width, the release's two-conv BatchNorm adapter)."""
    g = torch.Generator().manual_seed(seed)
    ck = root / "checkpoints"
    for sub in ("audiollm", "decoder", "codec"):
        (ck / sub).mkdir(parents=True, exist_ok=True)
    (ck / "audiollm" / "train.yaml").write_text(yaml.safe_dump(train_yaml(llm_width, dim)))
    (ck / "audiollm" / "global_cmvn").write_text(  # Kaldi text: `compute-cmvn-stats --binary=false`
        " [\n  " + " ".join(f"{x:g}" for x in CMVN_SUMS) + f" {CMVN_COUNT:g}\n  "
        + " ".join(f"{x:g}" for x in CMVN_SQUARES) + " 0 ]\n")
    torch.save(audiollm_tensors(g, llm_width, dim), ck / "audiollm" / "final.pt")
    args = {"idim": DEC, "odim": CODES, "encoder_pre_norm_type": "ln", "encoder_drop_rate": 0.1,
            "encoder_criterion": "ce", "encoder_upsample_rate": 9, "kv_cache_prefix_finetune": 1,
            "transformer_attention_dim": DEC, "transformer_linear_units": DEC_FFN,
            "transformer_num_blocks": DEC_LAYERS, "transformer_attention_heads": DEC_HEADS,
            "transformer_dropout_rate": 0.1, "encoder_output_dim": DEC, "encoder_layer_config": "transformer"}
    (ck / "decoder" / "model.json").write_text(json.dumps([DEC, CODES, args]))
    torch.save({"model": decoder_tensors(g)}, ck / "decoder" / "final.pt")
    (ck / "codec" / "model.json").write_text(json.dumps(CODEC))
    torch.save(codec_tensors(g), ck / "codec" / "final.pt")
    (ck / "server.json").write_text(json.dumps(
        {"decoder_top_k": 2, "decoder_penalty_window_size": -1, "decoder_penalty": 1.1,
         "decoder_first_chunk_size": 20, "decoder_chunk_size": 40, "decoder_chunk_overlap_size": 10,
         "decoder_N": 2401, "decoder_seg_threshold_first_pack": 0.1, "decoder_seg_threshold": 0.015}))
    return root


@pytest.fixture(scope="module")
def release(llm, tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("fo") / "Freeze-Omni", llm.hidden_size)


def load(llm, directory: Path):
    """The kind's load, with answers capped at 10 tokens (the release's 500 are slow to re-run in
    the reference, which recomputes the whole sequence per token)."""
    loaded = SpeechKind().load(directory, SimpleNamespace(llm=llm), None)
    loaded.model.cfg = dataclasses.replace(loaded.model.cfg, max_response_tokens=10)
    return loaded


@pytest.fixture(scope="module")
def loaded(llm, release):
    return load(llm, release)


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))).astype(np.float32)


def test_the_layout_is_detected_and_described(release):
    for directory in (release, release / "checkpoints"):  # the repository folder, or --model_path itself
        assert detect_kind(directory) == "speech"
        info = inspect_adapter(directory, EngineLimits())
        assert info.kind == "speech" and info.engine == "runtime" and "realtime" in info.serves
        assert info.base_model is None and info.details["format"] == "freeze-omni"
        assert info.details["base_width"] == 256 and info.details["release_base"] == "Qwen2-7B-Instruct"
        assert info.details["prompt_embeddings"] == PROMPT and info.details["decoder_top_k"] == 2
    with pytest.raises(InvalidAdapter, match="neither"):
        detect_kind(release / "checkpoints" / "codec")


def test_the_mapped_weights_are_the_checkpoints_tensors(loaded, release):
    m = loaded.model
    ck = release / "checkpoints"
    audio = torch.load(ck / "audiollm" / "final.pt")
    dec = torch.load(ck / "decoder" / "final.pt")["model"]
    codec = torch.load(ck / "codec" / "final.pt")
    e = "encoder.enc.1.encoders.1."
    pairs = [(m.encoder.sub1.weight, audio["encoder.enc.0.core.conv.0.weight"]),
             (m.encoder.sub2.bias, audio["encoder.enc.0.core.conv.2.bias"]),
             (m.encoder.sub_out.weight, audio["encoder.enc.0.core.out.0.weight"]),
             (m.encoder.embed.weight, audio["encoder.enc.1.embed.0.weight"]),
             (m.encoder.embed_norm.weight, audio["encoder.enc.1.embed.1.weight"]),
             (m.encoder.after_norm.bias, audio["encoder.enc.1.after_norm.bias"]),
             (m.encoder.layers[1].q.weight, audio[e + "self_attn.linear_q.weight"]),
             (m.encoder.layers[1].k.bias, audio[e + "self_attn.linear_k.bias"]),
             (m.encoder.layers[1].v.weight, audio[e + "self_attn.linear_v.weight"]),
             (m.encoder.layers[1].out.weight, audio[e + "self_attn.linear_out.weight"]),
             (m.encoder.layers[1].pos.weight, audio[e + "self_attn.linear_pos.weight"]),
             (m.encoder.layers[1].bias_u, audio[e + "self_attn.pos_bias_u"]),
             (m.encoder.layers[1].bias_v, audio[e + "self_attn.pos_bias_v"]),
             (m.encoder.layers[1].ffn1.weight, audio[e + "feed_forward.w_1.weight"]),
             (m.encoder.layers[1].ffn2.bias, audio[e + "feed_forward.w_2.bias"]),
             (m.encoder.layers[1].norm2.weight, audio[e + "norm2.weight"]),
             (m.adapter.conv2.weight, audio["adpter.conv1d2.weight"]),
             (m.adapter.norm2.weight, audio["adpter.bn2.weight"]),
             (m.adapter.proj.weight, audio["adpter.project.weight"]),
             (m.prompt.weight, audio["prompt_embeddings.weight"]),
             (m.state_head.weight, audio["predictor_head.weight"][:3]),  # the 3 the release's softmax reads
             (m.state_head.bias, audio["predictor_head.bias"][:3]),
             (m.decoder.embedding.weight, dec["embedding.weight"]),
             (m.decoder.pre[0].q.weight, dec["layers_pre_nn.0.self_attn.q_proj.weight"]),
             (m.decoder.layers[1].k.weight, dec["layers.1.self_attn.k_proj.weight"]),
             (m.decoder.layers[0].gate.weight, dec["layers.0.mlp.gate_proj.weight"]),
             (m.decoder.layers[0].up.weight, dec["layers.0.mlp.up_proj.weight"]),
             (m.decoder.layers[0].down.weight, dec["layers.0.mlp.down_proj.weight"]),
             (m.decoder.layers[1].attn_norm.weight, dec["layers.1.input_layernorm.weight"]),
             (m.decoder.layers[1].mlp_norm.weight, dec["layers.1.post_attention_layernorm.weight"]),
             (m.decoder.prefix[1].v.weight, dec["layers_prefix.1.self_attn.v_proj.weight"]),
             (m.decoder.norm.weight, dec["norm.weight"]), (m.decoder.out.bias, dec["out_fnn.bias"]),
             (m.vocoder.codebook.weight, codec["quantizer"]["quantizer_modules.0.embedding.weight"]),
             (m.vocoder.style[3].weight, codec["quantizer"]["quantizer_modules_globaltokens.3.embedding.weight"]),
             (m.vocoder.ups[1].bias, codec["generator"]["ups.1.bias"])]
    for got, want in pairs:
        assert torch.equal(got, want)
    gen = codec["generator"]
    for got, name in ((m.vocoder.conv_pre.weight, "conv_pre"), (m.vocoder.ups[0].weight, "ups.0"),
                      (m.vocoder.resblocks[1].convs2[2].weight, "resblocks.1.convs2.2"),
                      (m.vocoder.conv_post.weight, "conv_post")):
        v, g = gen[f"{name}.weight_v"], gen[f"{name}.weight_g"]  # weight_norm, folded: g * v / |v| per out row
        torch.testing.assert_close(got, g * v / v.flatten(1).norm(dim=1)[:, None, None])
    # and nothing else: every other tensor the networks hold is one of the checkpoint's
    released = [t for part in (audio, dec, codec["generator"], codec["quantizer"]) for t in part.values()]
    for name, param in m.named_parameters():
        if name.startswith("state_head.") or (name.startswith("vocoder.") and name.endswith(".weight")
                                              and not name.startswith(("vocoder.codebook", "vocoder.style"))):
            continue  # the rows and the folded weights checked above
        assert any(t.shape == param.shape and torch.equal(t, param) for t in released), name


def test_cmvn_is_the_global_cmvn_stats_and_applied(loaded, llm, release, tmp_path, monkeypatch):
    mean = np.array(CMVN_SUMS) / CMVN_COUNT
    istd = 1.0 / np.sqrt(np.array(CMVN_SQUARES) / CMVN_COUNT - mean ** 2)
    model = loaded.model
    torch.testing.assert_close(model.cmvn_mean, torch.tensor(mean, dtype=torch.float32))
    torch.testing.assert_close(model.cmvn_istd, torch.tensor(istd, dtype=torch.float32))
    # what a session's encoder receives is the fbank normalized with those stats
    seen = []
    encode = model.encode_stream
    monkeypatch.setattr(model, "encode_stream", lambda chunk, streams: seen.append(chunk) or encode(chunk, streams))
    pcm = noise(0.5, 3)
    state = open_session(llm, loaded, SessionConfig())
    run_turn(llm, loaded, state, pcm)
    want = (fbank(pcm)[:16] - mean) * istd
    np.testing.assert_allclose(seen[0][0].numpy(), want, rtol=1e-5, atol=1e-5)
    # final.pt's own CMVN buffers win over global_cmvn, as the release loads them
    other = write_release(tmp_path / "with-buffers", llm.hidden_size, seed=1)
    state = torch.load(other / "checkpoints" / "audiollm" / "final.pt")
    state["encoder.global_cmvn.mean"], state["encoder.global_cmvn.istd"] = torch.full((BINS,), 2.0), torch.ones(BINS)
    torch.save(state, other / "checkpoints" / "audiollm" / "final.pt")
    again = SpeechKind().load(other, SimpleNamespace(llm=llm), None).model
    assert torch.equal(again.cmvn_mean, torch.full((BINS,), 2.0)) and torch.equal(again.cmvn_istd, torch.ones(BINS))


def test_one_batched_encoder_step_equals_each_stream_alone(loaded):
    """Streams at different points (fresh, after one chunk, with a full and trimmed cache)."""
    model = loaded.model
    g = torch.Generator().manual_seed(5)
    chunks = torch.randn(12, 16, BINS, generator=g)
    streams = [None]
    for n in (1, 6):
        s = None
        for i in range(n):
            _, (s,) = model.encode_stream(chunks[i][None], [s])
        streams.append(s)
    assert streams[2].kv[0][0].shape[1] == 4 * LEFT  # the cache holds `left_chunks` chunks
    batch = chunks[8:11]
    together, nexts = model.encode_stream(batch, streams)
    for row, s in enumerate(streams):
        alone, (n,) = model.encode_stream(batch[row][None], [s])
        torch.testing.assert_close(together[row], alone[0], atol=1e-5, rtol=1e-5)
        assert n.pe_index == nexts[row].pe_index and all(
            torch.allclose(a[0], b[0], atol=1e-6) for a, b in zip(n.kv, nexts[row].kv))


@pytest.mark.parametrize("dim", [DIM, 32])
def test_a_transcription_runs_and_equals_the_reference(llm, release, tmp_path, dim):
    """What /v1/audio/transcriptions runs: the released encoder, adapter and turn prompt on the
    session's batched, cached LLM, against the whole sequence re-run per token (encoder width 32:
    32 * 4 < 256, the release's two-conv BatchNorm adapter)."""
    directory = release if dim == DIM else write_release(tmp_path / "two-convs", llm.hidden_size, dim=dim)
    loaded = load(llm, directory)
    assert (loaded.model.adapter.conv1 is not None) == (dim == 32)
    backbone = SimpleNamespace(llm=llm)
    clips = [noise(0.7, 20), noise(1.3, 21)]
    items = [prepare_call(backbone, loaded, TranscriptionCall(wav_bytes(c), "wav", None, 30.0)) for c in clips]
    out = run_calls(backbone, [(loaded, item) for item in items])
    for clip, result in zip(clips, out):
        ref = reference_turn(llm, loaded, clip)
        assert result.text == ref.transcript.strip() and result.tokens == len(ref.tokens) > 0


def test_a_spoken_turn_speaks_each_phrase_through_the_decoder_and_codec(llm, loaded):
    state = open_session(llm, loaded, SessionConfig(max_output_tokens=8))
    state.trace = []
    events = run_turn(llm, loaded, state, noise(0.9, 7))
    ref = reference_turn(llm, loaded, noise(0.9, 7), max_tokens=8)
    assert events[-1]["type"] == "done" and events[-1]["tokens"] == ref.tokens
    audio = [e for e in events if e["type"] == "audio"]
    assert [e["tokens"] for e in audio] == ref.phrases and len(audio) == len(ref.pcm)
    assert state.inputs.count("p") == PROMPT  # the prompt embeddings open the user turn
    for event, want in zip(audio, ref.pcm):
        got = np.frombuffer(event["pcm"], "<i2")
        assert len(got) == len(want) and len(got) % SAMPLES_PER_CODE == 0
        # the same codec codes: the states differ by the KV cache's ~1e-6, the draw is seeded
        assert np.abs(got / 32767.0 - want.numpy()).max() < 1e-3
    assert sum(len(np.frombuffer(e["pcm"], "<i2")) for e in audio) > 0
    # /v1/audio/speech: the same decoder and codec on the teacher-forced hidden states
    backbone = SimpleNamespace(llm=llm)
    item = prepare_call(backbone, loaded, SpeechCall("Hello there, friend."))
    (result,) = run_calls(backbone, [(loaded, item)])
    want = reference_speech(llm, loaded, "Hello there, friend.")
    got = np.frombuffer(result.pcm, "<i2") / 32767.0
    assert result.sample_rate == 24000 and got.shape == want.shape and np.abs(got - want).max() < 1e-3


def test_the_speech_text_is_the_releases_normalisation():
    from floe.adapters.speech.freeze_omni import speech_text

    assert speech_text("Hi (there)") == "Hi ,there。"  # brackets to commas, a trailing comma ends it
    assert speech_text("Step 1. Mix *well*,") == "Step 1:Mix well。"
    assert speech_text("好的、谢谢") == "好的，谢谢。" and speech_text("Done!") == "Done!" and speech_text("") == ""


def edit_yaml(directory: Path, change) -> None:
    path = directory / "checkpoints" / "audiollm" / "train.yaml"
    conf = yaml.safe_load(path.read_text())
    change(conf)
    path.write_text(yaml.safe_dump(conf))


def edit_json(name: str, change):
    def edit(directory: Path) -> None:
        path = directory / "checkpoints" / name
        conf = json.loads(path.read_text())
        change(conf)
        path.write_text(json.dumps(conf))
    return edit


def transformer(key: str, value):
    return lambda d: edit_yaml(d, lambda c: c["encoder_conf"]["para_conf"]["transformer"].__setitem__(key, value))


def model_conf(key: str, value):
    return lambda d: edit_yaml(d, lambda c: c["model_conf"].__setitem__(key, value))


@pytest.mark.parametrize("break_it, message", [
    (lambda d: (d / "checkpoints/codec/final.pt").unlink(), "needs checkpoints/codec/final.pt"),
    (lambda d: (d / "checkpoints/server.json").unlink(), "needs checkpoints/server.json"),
    (transformer("transformer-pos-enc-class", "abs-enc"), "abs-enc"),
    (transformer("transformer-positionwise-layer-type", "conv1d"), "positionwise-layer-type"),
    (transformer("transformer-chunk_size", 8), "chunk_size 8"),
    (transformer("transformer-attention-dim", 48), "enc_out_dim"),
    (model_conf("adpter_type", "cnn"), "adpter_type 'cnn'"),
    (model_conf("predict_usr_state", 3), "predict_usr_state"),
    (model_conf("chat_template", None), "chat_template"),
    (model_conf("bogus", 1), "does not take"),
    (lambda d: edit_yaml(d, lambda c: c["encoder_conf"]["overview_conf"].__setitem__(
        "encoder-layer-config", "subsampling-transformer-transformer")), "encoder-layer-config"),
    (edit_json("codec/model.json", lambda h: h.__setitem__("n_code_groups", 2)), "n_code_groups"),
    (edit_json("decoder/model.json", lambda c: c[2].__setitem__("idim", 32)), "idim"),
    (edit_json("decoder/model.json", lambda c: c[2].pop("kv_cache_prefix_finetune")), "kv_cache_prefix_finetune"),
    (edit_json("server.json", lambda s: s.pop("decoder_top_k")), "decoder_top_k"),
    (lambda d: (d / "checkpoints/audiollm/global_cmvn").write_bytes(b"\0BFM \x04"), "Kaldi binary"),
    (lambda d: (d / "checkpoints/audiollm/global_cmvn").write_text("[ 1 2 3 0 ]"), "bins"),
])
def test_a_bad_layout_is_refused_by_the_manifest(release, tmp_path, break_it, message):
    import shutil

    directory = tmp_path / "broken"
    shutil.copytree(release, directory)
    break_it(directory)
    with pytest.raises(InvalidAdapter, match=message):
        inspect_adapter(directory, EngineLimits())


def resave(path: Path, change) -> None:
    state = torch.load(path)
    change(state)
    torch.save(state, path)


@pytest.mark.parametrize("break_it, message", [
    (lambda ck: resave(ck / "audiollm/final.pt", lambda s: s.pop("encoder.enc.1.encoders.1.self_attn.linear_q.weight")),
     r"missing.*encoders\.1\.self_attn\.linear_q\.weight"),
    (lambda ck: resave(ck / "decoder/final.pt", lambda s: s["model"].pop("layers_prefix.0.mlp.up_proj.weight")),
     "missing.*layers_prefix.0.mlp.up_proj"),
    (lambda ck: resave(ck / "codec/final.pt", lambda s: s["generator"].pop("ups.1.weight_g")), "ups.1.weight_g"),
    (lambda ck: resave(ck / "audiollm/final.pt", lambda s: s.__setitem__("encoder.enc.2.conv.weight",
                                                                         torch.zeros(1))), "does not have"),
    (lambda ck: resave(ck / "audiollm/final.pt", lambda s: s.__setitem__("adpter.project.weight",
                                                                         torch.zeros(256, 64))), "shape"),
    (lambda ck: resave(ck / "codec/final.pt", lambda s: s.pop("quantizer")), "quantizer"),
    (lambda ck: (ck / "decoder/final.pt").write_bytes(b"not a checkpoint"), "torch checkpoint"),
])
def test_bad_weights_are_refused_at_load(llm, release, tmp_path, break_it, message):
    import shutil

    directory = tmp_path / "broken"
    shutil.copytree(release, directory)
    break_it(directory / "checkpoints")
    inspect_adapter(directory, EngineLimits())  # the configs are fine: the weights are checked at load
    with pytest.raises(InvalidAdapter, match=message):
        SpeechKind().load(directory, SimpleNamespace(llm=llm), None)


def test_a_checkpoint_for_another_base_width_is_refused(llm, tmp_path):
    directory = write_release(tmp_path / "wide", 512)
    assert inspect_adapter(directory, EngineLimits()).details["base_width"] == 512
    with pytest.raises(InvalidAdapter, match="width 512.*Qwen2-7B-Instruct.*width 256"):
        SpeechKind().load(directory, SimpleNamespace(llm=llm), None)
