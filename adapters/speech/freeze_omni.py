"""Freeze-Omni's released checkpoint layout, served as a `speech` adapter (docs/realtime.md).

The release (github.com/VITA-MLLM/Freeze-Omni, weights on huggingface.co/VITA-MLLM/Freeze-Omni)
is a `checkpoints/` folder next to Qwen2-7B-Instruct; floe takes the folder that holds it (or
`checkpoints/` itself), with no floe_adapter.json:

    checkpoints/audiollm/train.yaml    encoder_conf (overview_conf, para_conf), model_conf, input_dim,
                                       is_json_cmvn
    checkpoints/audiollm/global_cmvn   CMVN stats: Kaldi text `[ sums.. count  sums_of_squares.. 0 ]`,
                                       or JSON {mean_stat, var_stat, frame_num}
    checkpoints/audiollm/final.pt      state_dict: encoder.enc.0 (Conv2d 4x subsampling), encoder.enc.1
                                       (transformer), adpter (CNNSubsampling), prompt_embeddings,
                                       predictor_head
    checkpoints/decoder/model.json     [idim, odim, args]: the speech decoder (LLaMA layers, AR over
                                       codec tokens)
    checkpoints/decoder/final.pt       its state_dict (or {"model": state_dict})
    checkpoints/codec/model.json       the TiCodec config (generator, codebooks, global tokens)
    checkpoints/codec/final.pt         {"generator", "quantizer", "encoder"} state_dicts
    checkpoints/server.json            the release server's decoder settings

This module is torch-free (the registry reads layouts with it); `load` imports torch and
`model.FreezeOmniModel`, floe's own implementation of the released networks, and maps the
release's tensors onto it by name. What floe cannot run exactly is refused with an
InvalidAdapter naming it; a tensor the networks need and the checkpoint lacks is refused too
(the release itself loads with strict=False and would keep a random one).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from floe.adapters.speech import INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, SpeechConfig
from floe.server.kinds import MANIFEST, AdapterInfo, AdapterKind, InvalidAdapter

if TYPE_CHECKING:
    from floe.adapters.speech.model import FreezeOmniModel

AUDIOLLM, DECODER, CODEC = "audiollm", "decoder", "codec"
TRAIN_YAML, CMVN, WEIGHTS = "train.yaml", "global_cmvn", "final.pt"
MODEL_JSON, SERVER_JSON = "model.json", "server.json"
FILES = (f"{AUDIOLLM}/{TRAIN_YAML}", f"{AUDIOLLM}/{CMVN}", f"{AUDIOLLM}/{WEIGHTS}", f"{DECODER}/{MODEL_JSON}",
         f"{DECODER}/{WEIGHTS}", f"{CODEC}/{MODEL_JSON}", f"{CODEC}/{WEIGHTS}", SERVER_JSON)
RELEASE_BASE = "Qwen2-7B-Instruct"
CHUNK_FRAMES = 16  # the release's audio processor: 160 ms chunks of 10 ms fbank frames
SUBSAMPLING = 4  # its Conv2d front end: 16 frames -> 4 encoder frames per chunk
PHRASE_TOKENS = 20  # the release's server: after 20 tokens a comma ends a phrase too
MAX_RESPONSE_TOKENS = 500  # the release's server stops an answer at 500 tokens
STATE_CLASSES = 4  # predict_usr_state: the release's softmax reads the first 3 (listen / speak / stop)

# The release builds its encoder with argparse defaults, overridden by train.yaml's
# overview_conf and then each component's para_conf (keys with "-" or "_", the same option).
ENCODER_DEFAULTS: dict[str, Any] = {
    "encoder_layer_config": "tdnn-dtc", "encoder_input_dim": 256, "encoder_output_dim": 256,
    "subsampling_rate": 4, "subsampling_input_dim": 256, "subsampling_output_dim": 256,
    "subsampling_dropout_rate": 0.1,
    "transformer_input_dim": 256, "transformer_output_dim": 4, "transformer_attention_dim": 256,
    "transformer_attention_heads": 4, "transformer_linear_units": 1024, "transformer_num_blocks": 6,
    "transformer_dropout_rate": 0.1, "transformer_attention_dropout_rate": 0.0,
    "transformer_positional_dropout_rate": 0.1, "transformer_input_layer": "linear",
    "transformer_pos_enc_class": "abs-enc", "transformer_normalize_before": True,
    "transformer_concat_after": False, "transformer_positionwise_layer_type": "linear",
    "transformer_positionwise_conv_kernel_size": 1, "transformer_chunk_size": -1,
    "transformer_left_chunks": -1, "transformer_dynamic_chunks": True,
}
# model_conf is passed to the release's AudioLLM as keyword arguments: these, with these defaults.
MODEL_DEFAULTS: dict[str, Any] = {
    "llm_path": None, "freeze_llm": True, "enc_out_dim": 512, "llm_embed_dim": 4096, "kernel_size": 3,
    "IGNORE_ID": -100, "adpter_type": "cnn", "add_audio_bos_eos": False, "task_num": 10,
    "add_ctc_prompt_ratio": 0.0, "lang_dict": None, "ctc": None, "tokenize_ctc_char": False,
    "task_before_audio": False, "hyp_before_task": False, "prompt_finetune": False,
    "add_prompt_before": False, "prompt_num": 5, "prefix_finetune": False, "prefix_num": 5,
    "llm_head_num": 32, "num_key_value_heads": None, "task_type": "prompt", "freeze_encoder": False,
    "freeze_adpter": False, "activation_func": "relu", "norm": "batch", "use_lora": False,
    "clone_encoder": None, "chat_template": None, "predict_usr_state": 0, "chunk_size": -1,
}
DECODER_KEYS = ("idim", "odim", "kv_cache_prefix_finetune", "transformer_attention_dim", "transformer_linear_units",
                "transformer_num_blocks", "transformer_attention_heads", "encoder_output_dim")
CODEC_KEYS = ("resblock", "resblock_kernel_sizes", "resblock_dilation_sizes", "upsample_rates",
              "upsample_kernel_sizes", "upsample_initial_channel", "n_codes", "n_code_groups", "residul_layer",
              "global_code_num", "global_tokens")
SERVER_KEYS = ("decoder_top_k", "decoder_penalty_window_size", "decoder_penalty")
# server.json settings of the release's codec streaming (windows within a phrase, spliced at quiet
# points); floe decodes a phrase's codec tokens in one pass, so they do not apply.
SERVER_UNUSED = ("decoder_first_chunk_size", "decoder_chunk_size", "decoder_chunk_overlap_size", "decoder_N",
                 "decoder_seg_threshold_first_pack", "decoder_seg_threshold")


@dataclass(frozen=True)
class EncoderSpec:
    """The released encoder: Conv2d 4x subsampling, then transformer layers with the release's
    position biases (rel-enc), streaming over a key / value cache of `left_chunks` chunks."""

    subsampling_dim: int
    dim: int
    heads: int
    ffn: int
    layers: int
    input_linear: bool  # transformer-input-layer "linear" (Linear, LayerNorm, ReLU) or "none"
    normalize_before: bool
    concat_after: bool
    chunk: int  # encoder frames per chunk (transformer-chunk_size)
    left_chunks: int


@dataclass(frozen=True)
class AdapterSpec:
    """The released CNNSubsampling adapter: causal convolutions with a per-session cache."""

    kernel: int
    two_convs: bool  # enc_out_dim * 4 < llm_embed_dim: Conv1d (stride 1) and Conv1d (stride 2), BatchNorm, ReLU
    layer_norm: bool  # one conv: LayerNorm (norm "layer") or BatchNorm ("batch")
    gelu: bool  # one conv: GELU (activation_func "gelu") or ReLU
    prompt: int  # prompt embeddings before each user turn's audio (0: none)


@dataclass(frozen=True)
class DecoderSpec:
    """The released speech decoder: LLaMA layers over the phrase's text embeddings (and, with
    kv_cache_prefix_finetune, the LLM's hidden states as a key / value prefix), AR over codec tokens."""

    dim: int
    heads: int
    ffn: int
    layers: int
    vocab: int  # codec tokens; vocab, +1, +2, +3 are bos / sos / eos / pad
    prefix: bool
    top_k: int
    penalty_window: int  # <= 0: no repetition penalty
    penalty: float


@dataclass(frozen=True)
class CodecSpec:
    """The released TiCodec synthesis side: one codebook, global style tokens, a HiFi-GAN generator."""

    resblock: str  # "1" (three dilated pairs) or "2"
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    n_codes: int
    global_tokens: tuple[int, ...]


@dataclass(frozen=True)
class FreezeOmniConfig:
    llm_hidden: int
    encoder: EncoderSpec
    adapter: AdapterSpec
    decoder: DecoderSpec
    codec: CodecSpec


@dataclass(frozen=True)
class Layout:
    root: Path  # the checkpoints folder
    cfg: SpeechConfig  # what the session reads
    spec: FreezeOmniConfig  # what the released networks are
    cmvn_mean: list[float]
    cmvn_istd: list[float]


def checkpoints(directory: Path) -> Path | None:
    """The release's checkpoints folder in `directory` (it, or its `checkpoints/`), else None."""
    for root in (Path(directory) / "checkpoints", Path(directory)):
        if (root / AUDIOLLM / TRAIN_YAML).is_file():
            return root
    return None


def is_freeze_omni(directory: Path) -> bool:
    """A directory without floe_adapter.json that holds the release's audiollm/train.yaml."""
    return not (Path(directory) / MANIFEST).exists() and checkpoints(directory) is not None


def _refuse(what: str) -> InvalidAdapter:
    return InvalidAdapter(f"Freeze-Omni checkpoint: {what}", param="source")


def _int(value: Any, where: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _refuse(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _ints(value: Any, where: str, minimum: int = 1) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise _refuse(f"{where} must be a non-empty list of integers, got {value!r}")
    return tuple(_int(v, where, minimum) for v in value)


def _bool(value: Any, where: str) -> bool:
    # NOTE: the release parses these options with distutils' strtobool when they come as strings
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "y", "on", "t", "0", "false", "no", "n",
                                                    "off", "f"):
        return value.lower() in ("1", "true", "yes", "y", "on", "t")
    if not isinstance(value, bool | int):
        raise _refuse(f"{where} must be true or false, got {value!r}")
    return bool(value)


def _read_json(root: Path, name: str) -> Any:
    try:
        return json.loads((root / name).read_text())
    except (OSError, ValueError) as exc:
        raise _refuse(f"{name} is not valid JSON: {exc}") from exc


def _encoder(conf: Any, input_dim: int) -> EncoderSpec:
    """train.yaml's encoder_conf, merged over the release's defaults the way its encoder does."""
    if not isinstance(conf, dict) or not isinstance(conf.get("overview_conf"), dict) \
            or not isinstance(conf.get("para_conf"), dict):
        raise _refuse(f"{TRAIN_YAML}: encoder_conf needs overview_conf and para_conf objects")
    args = dict(ENCODER_DEFAULTS)

    def assign(options: Any, where: str) -> None:
        if not isinstance(options, dict):
            raise _refuse(f"{TRAIN_YAML}: {where} must be an object")
        for key, value in options.items():
            name = str(key).replace("-", "_")
            if name in args:  # the release ignores options its encoder does not have
                args[name] = value

    assign(conf["overview_conf"], "overview_conf")
    layers = str(args["encoder_layer_config"]).split("-")
    components = [name.split("_")[0] for name in layers]
    if components != ["subsampling", "transformer"]:
        raise _refuse(f"{TRAIN_YAML}: encoder-layer-config {args['encoder_layer_config']!r} is unsupported; floe "
                      "runs the released 'subsampling-transformer' encoder")
    snapshots = []
    for name in layers:
        if name not in conf["para_conf"]:
            raise _refuse(f"{TRAIN_YAML}: para_conf has no {name!r}")
        assign(conf["para_conf"][name], f"para_conf.{name}")
        snapshots.append(dict(args))
    sub, tr = snapshots
    if _int(sub["subsampling_rate"], "subsampling-rate") != SUBSAMPLING:
        raise _refuse(f"{TRAIN_YAML}: subsampling-rate {sub['subsampling_rate']} is unsupported (the release "
                      "builds only its 4x Conv2d subsampling)")
    dims = [("encoder-input-dim", args["encoder_input_dim"], "subsampling-input-dim", sub["subsampling_input_dim"]),
            ("subsampling-output-dim", sub["subsampling_output_dim"], "transformer-input-dim",
             tr["transformer_input_dim"]),
            ("transformer-output-dim", tr["transformer_output_dim"], "encoder-output-dim",
             tr["encoder_output_dim"]),
            ("input_dim", input_dim, "subsampling-input-dim", sub["subsampling_input_dim"])]
    for a, x, b, y in dims:
        if x != y:
            raise _refuse(f"{TRAIN_YAML}: {a} ({x}) must equal {b} ({y})")
    if tr["transformer_pos_enc_class"] != "rel-enc":
        raise _refuse(f"{TRAIN_YAML}: transformer-pos-enc-class {tr['transformer_pos_enc_class']!r} is unsupported; "
                      "the release streams only 'rel-enc' (its abs-enc has no streaming path)")
    if tr["transformer_positionwise_layer_type"] != "linear":
        raise _refuse(f"{TRAIN_YAML}: transformer-positionwise-layer-type "
                      f"{tr['transformer_positionwise_layer_type']!r} is unsupported; floe runs 'linear' "
                      "(the release's conv1d feed-forwards have no working streaming path)")
    if tr["transformer_input_layer"] not in ("linear", "none"):
        raise _refuse(f"{TRAIN_YAML}: transformer-input-layer {tr['transformer_input_layer']!r} is unsupported "
                      "('linear' or 'none' over features)")
    dim = _int(tr["transformer_attention_dim"], "transformer-attention-dim")
    heads = _int(tr["transformer_attention_heads"], "transformer-attention-heads")
    if dim % heads or dim % 2:
        raise _refuse(f"{TRAIN_YAML}: transformer-attention-dim {dim} must be even and divisible by its {heads} heads")
    if tr["transformer_input_layer"] == "none" and tr["transformer_input_dim"] != dim:
        raise _refuse(f"{TRAIN_YAML}: with transformer-input-layer 'none', transformer-input-dim must equal "
                      "transformer-attention-dim")
    chunk = _int(tr["transformer_chunk_size"], "transformer-chunk_size (streaming needs a positive chunk)")
    if chunk != CHUNK_FRAMES // SUBSAMPLING:
        raise _refuse(f"{TRAIN_YAML}: transformer-chunk_size {chunk} is unsupported; floe streams the release's "
                      f"160 ms chunks, {CHUNK_FRAMES // SUBSAMPLING} encoder frames each")
    return EncoderSpec(
        subsampling_dim=_int(sub["subsampling_output_dim"], "subsampling-output-dim"), dim=dim, heads=heads,
        ffn=_int(tr["transformer_linear_units"], "transformer-linear-units"),
        layers=_int(tr["transformer_num_blocks"], "transformer-num-blocks"),
        input_linear=tr["transformer_input_layer"] == "linear",
        normalize_before=_bool(tr["transformer_normalize_before"], "transformer-normalize-before"),
        concat_after=_bool(tr["transformer_concat_after"], "transformer-concat-after"), chunk=chunk,
        left_chunks=_int(tr["transformer_left_chunks"], "transformer-left_chunks (streaming needs a positive "
                         "left context)"))


def _model_conf(conf: Any, encoder: EncoderSpec) -> tuple[AdapterSpec, int]:
    """train.yaml's model_conf -> the adapter and the LLM width it expects."""
    if not isinstance(conf, dict):
        raise _refuse(f"{TRAIN_YAML}: model_conf must be an object")
    unknown = sorted(set(conf) - set(MODEL_DEFAULTS))
    if unknown:
        raise _refuse(f"{TRAIN_YAML}: model_conf has keys the release's AudioLLM does not take: {unknown}")
    m = {**MODEL_DEFAULTS, **conf}
    if m["adpter_type"] != "subsampling":
        raise _refuse(f"{TRAIN_YAML}: adpter_type {m['adpter_type']!r} is unsupported; the release streams only its "
                      "'subsampling' adapter (CNNSubsampling)")
    for key in ("use_lora", "ctc", "clone_encoder", "lang_dict"):
        if m[key]:
            raise _refuse(f"{TRAIN_YAML}: model_conf.{key} is unsupported (not part of the released inference)")
    if m["add_ctc_prompt_ratio"]:
        raise _refuse(f"{TRAIN_YAML}: add_ctc_prompt_ratio > 0 is unsupported (CTC prompts need a CTC head the "
                      "release does not ship)")
    if m["enc_out_dim"] != encoder.dim:
        raise _refuse(f"{TRAIN_YAML}: model_conf.enc_out_dim ({m['enc_out_dim']}) must equal the encoder's output "
                      f"(transformer-attention-dim {encoder.dim})")
    if m["predict_usr_state"] != STATE_CLASSES:
        raise _refuse(f"{TRAIN_YAML}: predict_usr_state {m['predict_usr_state']!r} is unsupported; the release's "
                      f"state head has {STATE_CLASSES} outputs (it reads listen / speak / stop from the first 3)")
    template = m["chat_template"]
    if not isinstance(template, str) or "<audio>" not in template or "<|im_end|>" not in template.split("<audio>")[0]:
        raise _refuse(f"{TRAIN_YAML}: chat_template must be the release's ChatML template with an <audio> slot; "
                      "floe renders the base's own chat template around the audio")
    if m["norm"] not in ("batch", "layer") or m["activation_func"] not in ("gelu", "relu"):
        raise _refuse(f"{TRAIN_YAML}: adapter norm {m['norm']!r} / activation_func {m['activation_func']!r} are "
                      "unsupported ('batch' or 'layer'; 'gelu' or 'relu')")
    llm_hidden = _int(m["llm_embed_dim"], "model_conf.llm_embed_dim")
    prompt = _int(m["prompt_num"], "model_conf.prompt_num") if _bool(m["prompt_finetune"], "prompt_finetune") \
        and _bool(m["add_prompt_before"], "add_prompt_before") else 0
    adapter = AdapterSpec(kernel=_int(m["kernel_size"], "model_conf.kernel_size", minimum=2),
                          two_convs=encoder.dim * 4 < llm_hidden, layer_norm=m["norm"] == "layer",
                          gelu=m["activation_func"] == "gelu", prompt=prompt)
    return adapter, llm_hidden


def _decoder(root: Path, llm_hidden: int) -> DecoderSpec:
    conf = _read_json(root, f"{DECODER}/{MODEL_JSON}")
    if not isinstance(conf, list) or len(conf) != 3 or not isinstance(conf[2], dict):
        raise _refuse(f"{DECODER}/{MODEL_JSON} must be [idim, odim, args]")
    args = conf[2]
    missing = [k for k in DECODER_KEYS if k not in args]
    if missing:
        raise _refuse(f"{DECODER}/{MODEL_JSON}: args lacks {missing}")
    dim = _int(args["transformer_attention_dim"], "decoder transformer_attention_dim")
    heads = _int(args["transformer_attention_heads"], "decoder transformer_attention_heads")
    if args["idim"] != dim or args["encoder_output_dim"] != dim:
        raise _refuse(f"{DECODER}/{MODEL_JSON}: idim ({args['idim']}) and encoder_output_dim "
                      f"({args['encoder_output_dim']}) must equal transformer_attention_dim ({dim})")
    if dim % heads or (dim // heads) % 2:
        raise _refuse(f"{DECODER}/{MODEL_JSON}: transformer_attention_dim {dim} must split into {heads} heads of "
                      "even size (rotary positions)")
    if llm_hidden % dim:
        raise _refuse(f"{DECODER}/{MODEL_JSON}: the LLM width {llm_hidden} must be a multiple of idim {dim} (the "
                      "release feeds each LLM vector as llm_width / idim decoder inputs)")
    server = _read_json(root, SERVER_JSON)
    if not isinstance(server, dict) or any(k not in server for k in SERVER_KEYS):
        raise _refuse(f"{SERVER_JSON} must be an object with {list(SERVER_KEYS)}")
    penalty = server["decoder_penalty"]
    if not isinstance(penalty, int | float) or isinstance(penalty, bool) or penalty <= 0:
        raise _refuse(f"{SERVER_JSON}: decoder_penalty must be a positive number, got {penalty!r}")
    window = server["decoder_penalty_window_size"]
    if not isinstance(window, int) or isinstance(window, bool):
        raise _refuse(f"{SERVER_JSON}: decoder_penalty_window_size must be an integer, got {window!r}")
    return DecoderSpec(dim=dim, heads=heads, ffn=_int(args["transformer_linear_units"], "decoder linear units"),
                       layers=_int(args["transformer_num_blocks"], "decoder transformer_num_blocks"),
                       vocab=_int(args["odim"], "decoder odim"), prefix=_bool(args["kv_cache_prefix_finetune"],
                                                                             "kv_cache_prefix_finetune"),
                       top_k=_int(server["decoder_top_k"], f"{SERVER_JSON} decoder_top_k"),
                       penalty_window=window, penalty=float(penalty))


def _codec(root: Path, vocab: int) -> CodecSpec:
    h = _read_json(root, f"{CODEC}/{MODEL_JSON}")
    if not isinstance(h, dict) or any(k not in h for k in CODEC_KEYS):
        raise _refuse(f"{CODEC}/{MODEL_JSON} must be an object with {list(CODEC_KEYS)}")
    if h["n_code_groups"] != 1 or h["residul_layer"] != 1:
        raise _refuse(f"{CODEC}/{MODEL_JSON}: n_code_groups {h['n_code_groups']} / residul_layer "
                      f"{h['residul_layer']} are unsupported; the released decoder makes one token stream, "
                      "read by a single codebook (1 / 1)")
    if h["resblock"] not in ("1", "2"):
        raise _refuse(f"{CODEC}/{MODEL_JSON}: resblock must be '1' or '2', got {h['resblock']!r}")
    kernels, rates = _ints(h["resblock_kernel_sizes"], "resblock_kernel_sizes"), _ints(h["upsample_rates"],
                                                                                       "upsample_rates")
    ups = _ints(h["upsample_kernel_sizes"], "upsample_kernel_sizes")
    dilations = h["resblock_dilation_sizes"]
    per_block = 3 if h["resblock"] == "1" else 2
    if not isinstance(dilations, list) or len(dilations) != len(kernels) \
            or any(len(_ints(d, "resblock_dilation_sizes")) != per_block for d in dilations):
        raise _refuse(f"{CODEC}/{MODEL_JSON}: resblock_dilation_sizes needs one list of {per_block} per kernel size")
    if len(ups) != len(rates) or any((k - u) % 2 for k, u in zip(ups, rates)):
        raise _refuse(f"{CODEC}/{MODEL_JSON}: upsample_kernel_sizes must pair with upsample_rates (k - u even)")
    channels = _int(h["upsample_initial_channel"], "upsample_initial_channel")
    if channels % 2 ** len(rates):
        raise _refuse(f"{CODEC}/{MODEL_JSON}: upsample_initial_channel {channels} must halve {len(rates)} times")
    n_codes = _int(h["n_codes"], "n_codes")
    tokens = _ints(h["global_tokens"], "global_tokens", minimum=0)
    groups = _int(h["global_code_num"], "global_code_num")
    if len(tokens) != groups or 128 % groups or max(tokens) >= n_codes:
        raise _refuse(f"{CODEC}/{MODEL_JSON}: global_tokens must be {groups} codes below n_codes, and "
                      "global_code_num must divide the 128-dim style vector")
    if vocab > n_codes:
        raise _refuse(f"the decoder's {vocab} codec tokens exceed the codec's {n_codes} codes")
    return CodecSpec(resblock=h["resblock"], resblock_kernel_sizes=kernels,
                     resblock_dilation_sizes=tuple(tuple(d) for d in dilations), upsample_rates=rates,
                     upsample_kernel_sizes=ups, upsample_initial_channel=channels, n_codes=n_codes,
                     global_tokens=tokens)


def _cmvn(root: Path, is_json: bool, dim: int) -> tuple[list[float], list[float]]:
    """global_cmvn -> (mean, 1 / std) per bin, as the release computes them (float64, var floored at 1e-20)."""
    path = root / AUDIOLLM / CMVN
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _refuse(f"{AUDIOLLM}/{CMVN} is unreadable: {exc}") from exc
    try:
        if is_json:
            stats = json.loads(raw)
            sums, squares, count = list(stats["mean_stat"]), list(stats["var_stat"]), float(stats["frame_num"])
        else:
            if raw.startswith(b"\0B"):
                raise ValueError("Kaldi binary stats; the release reads `compute-cmvn-stats --binary=false` text")
            words = raw.decode().split()
            if len(words) < 6 or words[0] != "[" or words[-2] != "0" or words[-1] != "]" or len(words) % 2:
                raise ValueError("not a Kaldi text matrix `[ sums.. count sums_of_squares.. 0 ]`")
            n = (len(words) - 4) // 2
            sums, count, squares = words[1:n + 1], float(words[n + 1]), words[n + 2:2 * n + 2]
        sums, squares = [float(x) for x in sums], [float(x) for x in squares]
        if len(sums) != len(squares) or count <= 0:
            raise ValueError("sums and squares differ in length, or the frame count is not positive")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise _refuse(f"{AUDIOLLM}/{CMVN} ({'JSON' if is_json else 'Kaldi text'}, per is_json_cmvn): {exc}") from exc
    if len(sums) != dim:
        raise _refuse(f"{AUDIOLLM}/{CMVN} has {len(sums)} bins; the encoder takes {dim}")
    mean = [s / count for s in sums]
    istd = [1.0 / math.sqrt(max(q / count - m * m, 1.0e-20)) for q, m in zip(squares, mean)]
    return mean, istd


def read_layout(directory: Path) -> Layout:
    """Every config file of the layout, checked (torch-free): what the networks are and what the
    session reads. The weights are checked by `load`."""
    import yaml

    root = checkpoints(directory)
    if root is None:
        raise _refuse(f"no {AUDIOLLM}/{TRAIN_YAML} (in the directory or its checkpoints/)")
    for name in FILES:
        if not (root / name).is_file():
            raise InvalidAdapter(f"a Freeze-Omni checkpoint needs checkpoints/{name}", param="source")
    try:
        train = yaml.safe_load((root / AUDIOLLM / TRAIN_YAML).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise _refuse(f"{AUDIOLLM}/{TRAIN_YAML} is not valid YAML: {exc}") from exc
    if not isinstance(train, dict):
        raise _refuse(f"{AUDIOLLM}/{TRAIN_YAML} must be a mapping")
    input_dim = _int(train.get("input_dim"), f"{TRAIN_YAML} input_dim")
    encoder = _encoder(train.get("encoder_conf"), input_dim)
    adapter, llm_hidden = _model_conf(train.get("model_conf"), encoder)
    decoder = _decoder(root, llm_hidden)
    codec = _codec(root, decoder.vocab)
    mean, istd = _cmvn(root, _bool(train.get("is_json_cmvn"), f"{TRAIN_YAML} is_json_cmvn"), input_dim)
    try:
        cfg = SpeechConfig(num_mel_bins=input_dim, chunk_frames=CHUNK_FRAMES, encoder_dim=encoder.dim,
                           encoder_layers=encoder.layers, encoder_heads=encoder.heads, left_chunks=encoder.left_chunks,
                           adapter_dim=encoder.dim * (4 if adapter.two_convs else 2), llm_hidden=llm_hidden,
                           decoder_dim=decoder.dim, decoder_layers=decoder.layers, decoder_heads=decoder.heads,
                           output_sample_rate=OUTPUT_SAMPLE_RATE, phrase_tokens=PHRASE_TOKENS,
                           max_response_tokens=MAX_RESPONSE_TOKENS, state_head=True)
    except ValueError as exc:
        raise _refuse(str(exc)) from exc
    return Layout(root, cfg, FreezeOmniConfig(llm_hidden, encoder, adapter, decoder, codec), mean, istd)


def describe(kind: AdapterKind, directory: Path) -> AdapterInfo:
    """The speech kind's manifest of a Freeze-Omni directory: no floe fingerprint, so the base is
    named by the LLM width the checkpoint expects (checked at load)."""
    layout = read_layout(directory)
    cfg, spec = layout.cfg, layout.spec
    return kind.info({}, format="freeze-omni", base_width=spec.llm_hidden, release_base=RELEASE_BASE,
                     input_sample_rate=INPUT_SAMPLE_RATE, output_sample_rate=cfg.output_sample_rate,
                     voice="ticodec", chunk_frames=cfg.chunk_frames, encoder_dim=cfg.encoder_dim,
                     encoder_layers=cfg.encoder_layers, left_chunks=cfg.left_chunks,
                     prompt_embeddings=spec.adapter.prompt, decoder_dim=cfg.decoder_dim,
                     decoder_layers=cfg.decoder_layers, codec_tokens=spec.decoder.vocab,
                     decoder_top_k=spec.decoder.top_k, phrase_tokens=cfg.phrase_tokens,
                     max_response_tokens=cfg.max_response_tokens)


# -- the text the speech decoder reads (the release's post_process of a phrase) ----------------------
CJK = re.compile(r"[\u4e00-\u9fa5]")
TERMINAL = "。？！.?!"
SOFT_ENDS = ",，;；:：、"


def speech_text(text: str) -> str:
    """A phrase's text as the released decoder was trained to read it: brackets as commas, no
    markup characters or line breaks, "1. x" as "1:x", and a sentence end."""
    for a, b in (("、", "，"), ("(", ","), (")", ","), ("（", "，"), ("）", "，")):
        text = text.replace(a, b)
    text = re.sub(r"[\n\r\t]", "", text)
    text = re.sub(r"[*_`~]", "", text)
    text = re.sub(r"([.:])\s+", r"\1", text)
    if CJK.search(text):
        text = re.sub(r"(\d+)\.\s*([\u4e00-\u9fa5A-Za-z])", r"\1：\2", text)
    else:
        text = re.sub(r"(\d+)\.\s*(\w)", r"\1:\2", text)
    if text and text[-1] not in TERMINAL:
        text = text[:-1] + "。" if text[-1] in SOFT_ENDS else text + "。"
    return text


# -- weights ------------------------------------------------------------------------------------------
# floe's module names -> the release's, per file. The encoder layer, the decoder block and the
# generator keep their inner structure; the tables name each piece.
ENCODER_TOP = {"sub1": "encoder.enc.0.core.conv.0", "sub2": "encoder.enc.0.core.conv.2",
               "sub_out": "encoder.enc.0.core.out.0", "embed": "encoder.enc.1.embed.0",
               "embed_norm": "encoder.enc.1.embed.1", "after_norm": "encoder.enc.1.after_norm"}
ENCODER_LAYER = {"q": "self_attn.linear_q", "k": "self_attn.linear_k", "v": "self_attn.linear_v",
                 "out": "self_attn.linear_out", "pos": "self_attn.linear_pos", "bias_u": "self_attn.pos_bias_u",
                 "bias_v": "self_attn.pos_bias_v", "ffn1": "feed_forward.w_1", "ffn2": "feed_forward.w_2",
                 "norm1": "norm1", "norm2": "norm2", "concat": "concat_linear"}
ADAPTER = {"conv1": "adpter.conv1d1", "norm1": "adpter.bn1", "conv2": "adpter.conv1d2", "norm2": "adpter.bn2",
           "proj": "adpter.project"}
DECODER_STACKS = {"pre": "layers_pre_nn", "layers": "layers", "prefix": "layers_prefix"}
DECODER_BLOCK = {"attn_norm": "input_layernorm", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
                 "v": "self_attn.v_proj", "o": "self_attn.o_proj", "mlp_norm": "post_attention_layernorm",
                 "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
DECODER_TOP = {"embedding": "embedding", "norm": "norm", "out": "out_fnn"}
# Tensors of audiollm/final.pt the released inference never reads: the frozen LLM (floe serves its
# own copy of the base), task and prefix embeddings (training only), the CMVN buffers (read below).
AUDIOLLM_UNUSED = ("llm_decoder.", "task_embeddings.", "prefix_embeddings.", "encoder.global_cmvn.")


def release_name(key: str, spec: FreezeOmniConfig) -> tuple[str, str]:
    """floe's state_dict key -> (the release's file, its key there)."""
    part = key.split(".")
    name = lambda *pieces: ".".join(p for p in pieces if p)  # noqa: E731
    if part[0] == "encoder":
        if part[1] == "layers":
            return AUDIOLLM, name(f"encoder.enc.1.encoders.{part[2]}", ENCODER_LAYER[part[3]], *part[4:])
        return AUDIOLLM, name(ENCODER_TOP[part[1]], *part[2:])
    if part[0] == "adapter":
        return AUDIOLLM, name(ADAPTER[part[1]], *part[2:])
    if part[0] in ("prompt", "state_head"):
        return AUDIOLLM, name("prompt_embeddings" if part[0] == "prompt" else "predictor_head", *part[1:])
    if part[0] == "decoder":
        if part[1] in DECODER_STACKS:
            return DECODER, name(DECODER_STACKS[part[1]], part[2], DECODER_BLOCK[part[3]], *part[4:])
        return DECODER, name(DECODER_TOP[part[1]], *part[2:])
    if part[0] == "vocoder":
        if part[1] == "codebook":
            return CODEC, name("quantizer.quantizer_modules.0.embedding", *part[2:])
        if part[1] == "style":
            return CODEC, name(f"quantizer.quantizer_modules_globaltokens.{part[2]}.embedding", *part[3:])
        if spec.codec.resblock == "2" and len(part) > 3 and part[3] == "convs1":
            part[3] = "convs"  # the release names ResBlock2's convolutions `convs`
        return CODEC, name("generator", *part[1:])
    raise KeyError(key)


def _torch_load(path: Path, what: str) -> dict[str, Any]:
    import pickle

    import torch

    try:
        # NOTE: weights_only: a checkpoint is data; mmap: the release's final.pt may carry the 7B base
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise _refuse(f"{what} is not a torch checkpoint floe can read (weights only): {exc}") from exc
    if not isinstance(data, dict):
        raise _refuse(f"{what} must hold a state_dict")
    return data


def _sections(root: Path) -> dict[str, dict[str, Any]]:
    """Each file's tensors, keyed as in the release (the codec's with its "generator." / "quantizer."
    sections, the decoder's unwrapped from {"model": ...})."""
    audiollm = _torch_load(root / AUDIOLLM / WEIGHTS, f"{AUDIOLLM}/{WEIGHTS}")
    decoder = _torch_load(root / DECODER / WEIGHTS, f"{DECODER}/{WEIGHTS}")
    if isinstance(decoder.get("model"), dict):
        decoder = decoder["model"]
    codec = _torch_load(root / CODEC / WEIGHTS, f"{CODEC}/{WEIGHTS}")
    for part in ("generator", "quantizer"):
        if not isinstance(codec.get(part), dict):
            raise _refuse(f"{CODEC}/{WEIGHTS} has no {part!r} state_dict")
    flat = {f"{part}.{k}": v for part in ("generator", "quantizer") for k, v in codec[part].items()}
    return {AUDIOLLM: audiollm, DECODER: decoder, CODEC: flat}


def load(directory: Path, llm_hidden: int) -> FreezeOmniModel:
    """The release's networks with its weights, for a base of width `llm_hidden`: every tensor the
    networks read comes from the checkpoint, and a checkpoint tensor they have no place for (one
    the released inference reads) is refused rather than dropped."""
    import torch

    from floe.adapters.speech.model import FreezeOmniModel

    layout = read_layout(directory)
    spec = layout.spec
    if spec.llm_hidden != llm_hidden:
        raise InvalidAdapter(f"this Freeze-Omni checkpoint is for a base of width {spec.llm_hidden} (the release's "
                             f"is {RELEASE_BASE}); this runtime serves a base of width {llm_hidden}", param="source")
    model = FreezeOmniModel(layout.cfg, spec)
    sections = _sections(layout.root)
    used: dict[str, set[str]] = {name: set() for name in sections}
    state = dict(model.state_dict())  # BatchNorm's num_batches_tracked stays floe's: eval never reads it
    missing: list[str] = []
    for key, param in model.state_dict().items():
        if key in ("cmvn_mean", "cmvn_istd") or key.endswith("num_batches_tracked"):
            continue
        where, name = release_name(key, spec)
        tensors = sections[where]
        value = tensors.get(name)
        if value is None and where == CODEC and name.endswith(".weight") and f"{name}_v" in tensors:
            g, v = tensors.get(f"{name}_g"), tensors[f"{name}_v"]  # weight_norm: folded as remove_weight_norm does
            if g is None:
                missing.append(f"{where}/{WEIGHTS}: {name}_g")
                continue
            used[where] |= {f"{name}_g", f"{name}_v"}
            value = torch._weight_norm(v.float(), g.float(), 0)
        elif value is None:
            missing.append(f"{where}/{WEIGHTS}: {name}")
            continue
        else:
            used[where].add(name)
        if key.startswith("state_head."):  # the release's softmax reads the first 3 of its 4 outputs
            if value.shape[0] != STATE_CLASSES:
                raise _refuse(f"{AUDIOLLM}/{WEIGHTS}: {name} has {value.shape[0]} outputs, predict_usr_state says "
                              f"{STATE_CLASSES}")
            value = value[:3]
        if tuple(value.shape) != tuple(param.shape):
            raise _refuse(f"{where}/{WEIGHTS}: {name} has shape {list(value.shape)}, the configs give "
                          f"{list(param.shape)}")
        state[key] = value
    if missing:
        raise _refuse(f"tensors the networks need are missing: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    mean, istd = layout.cmvn_mean, layout.cmvn_istd
    stored = sections[AUDIOLLM]
    if "encoder.global_cmvn.mean" in stored and "encoder.global_cmvn.istd" in stored:
        # NOTE: the release loads final.pt over the stats it read from global_cmvn: its buffers win
        mean, istd = stored["encoder.global_cmvn.mean"].tolist(), stored["encoder.global_cmvn.istd"].tolist()
    state["cmvn_mean"] = torch.tensor(mean, dtype=torch.float64).float()
    state["cmvn_istd"] = torch.tensor(istd, dtype=torch.float64).float()
    ignored = {AUDIOLLM: AUDIOLLM_UNUSED + (() if spec.adapter.prompt else ("prompt_embeddings.",))}
    for where, tensors in sections.items():
        unknown = sorted(k for k in tensors if k not in used[where] and not k.endswith("num_batches_tracked")
                         and not k.startswith(ignored.get(where, ())))
        if unknown:
            raise _refuse(f"{where}/{WEIGHTS} has tensors floe's implementation of the released networks does not "
                          f"have (another architecture or config?): {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise _refuse(f"the weights do not fit the configs: {exc}") from exc
    return model.eval().requires_grad_(False)
