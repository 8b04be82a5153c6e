"""A `LlavaForConditionalGeneration` checkpoint -> the text LLM vLLM serves + a `vision` adapter.

    <llava>/config.json, *.safetensors, tokenizer, processor (chat template, image processor)
      -> <out>/llm/     text_config as a *ForCausalLM config, the language model's weights
                        (`language_model.model.*` / `model.language_model.*` -> `model.*`,
                        `lm_head.*`), the tokenizer, the chat template (wrapped, below)
      -> <out>/vision/  tower/ = vision_tower weights as a CLIPVisionModel (or the config's
                        vision model) dir + the LLaVA's preprocessor_config.json,
                        projector.safetensors = multi_modal_projector, floe_adapter.json with
                        vision_feature_layer / select strategy / projector act / image token

Weights are streamed shard by shard (one shard in memory at a time); every tensor name is
matched against the target model's own state-dict names (built on the meta device), and a
tensor that fits nowhere is an error, so nothing is silently dropped.

The chat template: vLLM hands a `prompt_embeds` part to the template as the text part
`<prompt_embeds>` (floe.adapters.vision.chat), where LLaVA's processor hands an image part. The
text LLM's template is the LLaVA template with a prelude that turns such text parts back into
`{"type": "image"}` parts, and with the image token replaced by `<prompt_embeds>`, so the
rendered prompt is the LLaVA prompt with one placeholder where LLaVA puts its image tokens.
`split_cached` keys the split by the checkpoint's content hash and this module's code.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from floe.adapters.vision import KIND, PROJECTOR, TOWER
from floe.adapters.vision.chat import PLACEHOLDER
from floe.server.kinds import MANIFEST

LLM, VISION = "llm", "vision"
# llava-hf/llava-1.5-*-hf's template: used when a checkpoint ships none.
LLAVA_15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_PRELUDE = (
    "{%- set floe_ns = namespace(messages=[]) -%}"
    "{%- for floe_m in messages -%}"
    "{%- if floe_m['content'] is string or floe_m['content'] is none -%}"
    "{%- set floe_ns.messages = floe_ns.messages + [floe_m] -%}"
    "{%- else -%}{%- set floe_parts = namespace(items=[]) -%}"
    "{%- for floe_p in floe_m['content'] -%}"
    "{%- if floe_p['type'] == 'text' and floe_p['text'] == '" + PLACEHOLDER + "' -%}"
    "{%- set floe_parts.items = floe_parts.items + [{'type': 'image'}] -%}"
    "{%- else -%}{%- set floe_parts.items = floe_parts.items + [floe_p] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set floe_ns.messages = floe_ns.messages + [dict(floe_m, content=floe_parts.items)] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set messages = floe_ns.messages -%}"
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "added_tokens.json", "vocab.json", "merges.txt")


def text_template(llava_template: str, image_token: str) -> str:
    """The text LLM's chat template: LLaVA's, fed image parts where vLLM sends placeholders."""
    return _PRELUDE + llava_template.replace(image_token, PLACEHOLDER)


def read_chat_template(llava_dir: Path) -> str | None:
    if (llava_dir / "chat_template.jinja").is_file():
        return (llava_dir / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        path = llava_dir / name
        if path.is_file():
            template = json.loads(path.read_text()).get("chat_template")
            if isinstance(template, str):
                return template
    return None


def _processor_config(llava_dir: Path) -> dict[str, Any] | None:
    if (llava_dir / "preprocessor_config.json").is_file():
        return json.loads((llava_dir / "preprocessor_config.json").read_text())
    if (llava_dir / "processor_config.json").is_file():
        image = json.loads((llava_dir / "processor_config.json").read_text()).get("image_processor")
        return image if isinstance(image, dict) else None
    return None


def _shards(llava_dir: Path) -> list[Path]:
    shards = sorted(llava_dir.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"{llava_dir}: no *.safetensors weights")
    return shards


_PARTS = (("tower", "model.vision_tower."), ("tower", "vision_tower."),
          ("projector", "model.multi_modal_projector."), ("projector", "multi_modal_projector."),
          ("text", "model.language_model."), ("text", "language_model."), ("text", ""))


def _place(name: str, expected: dict[str, set[str]]) -> tuple[str, str]:
    """A checkpoint tensor name -> (part, the target model's name for it); an error if none fits."""
    for part, prefix in _PARTS:
        if name.startswith(prefix) and (prefix or name.startswith("lm_head.")):
            rest = name[len(prefix):]
            for candidate in (rest, "model." + rest, "vision_model." + rest,
                              rest.removeprefix("model."), rest.removeprefix("vision_model.")):
                if candidate in expected[part]:
                    return part, candidate
            raise ValueError(f"{name}: no such weight in the {part} model")
    raise ValueError(f"weight {name} is neither language model, vision tower nor projector")


def _state_keys(build) -> set[str]:
    import torch

    with torch.device("meta"):
        return set(build().state_dict())


def split_llava(llava_dir: Path, out: Path) -> tuple[Path, Path]:
    """Write (text LLM dir, vision adapter dir) under `out` for a LLaVA checkpoint."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from floe.server.runtime.model import base_fingerprint

    llava_dir, out = Path(llava_dir), Path(out)
    config = AutoConfig.from_pretrained(llava_dir)
    if config.model_type != "llava":
        raise ValueError(f"{llava_dir}: model_type {config.model_type!r}, expected a LLaVA checkpoint (llava)")
    text_cfg, vision_cfg = config.text_config, config.vision_config
    text_dir, adapter_dir = out / LLM, out / VISION
    (adapter_dir / TOWER).mkdir(parents=True, exist_ok=True)
    text_dir.mkdir(parents=True, exist_ok=True)

    llm_class = AutoModelForCausalLM._model_mapping[type(text_cfg)]
    text_cfg.architectures = [llm_class.__name__]
    text_keys = _state_keys(lambda: llm_class(text_cfg))
    vision_keys = _state_keys(lambda: AutoModel.from_config(vision_cfg))
    expected = {"text": text_keys, "tower": vision_keys,
                "projector": {"linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}}
    shards = _shards(llava_dir)
    tower: dict[str, Any] = {}
    projector: dict[str, Any] = {}
    weight_map: dict[str, str] = {}
    seen: set[str] = set()
    for n, shard in enumerate(shards):
        text: dict[str, Any] = {}
        parts = {"text": text, "tower": tower, "projector": projector}
        with safe_open(str(shard), "pt") as fh:
            for name in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                part, key = _place(name, expected)
                parts[part][key] = fh.get_tensor(name)
        file = "model.safetensors" if len(shards) == 1 else f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in text.items()}, str(text_dir / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(text, file))
        seen |= set(text)
    missing = text_keys - seen - ({"lm_head.weight"} if text_cfg.tie_word_embeddings else set())
    if missing or vision_keys - set(tower) or len(projector) < 2:
        raise ValueError(f"{llava_dir}: weights missing: {sorted(missing | (vision_keys - set(tower)))[:4]} "
                         f"(projector: {sorted(projector)})")
    if len(shards) > 1:
        (text_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    text_cfg.save_pretrained(text_dir)
    if (llava_dir / "generation_config.json").is_file():
        shutil.copy(llava_dir / "generation_config.json", text_dir / "generation_config.json")

    tokenizer = AutoTokenizer.from_pretrained(llava_dir)
    image_token = getattr(tokenizer, "image_token", None) or tokenizer.convert_ids_to_tokens(config.image_token_id)
    template = text_template(read_chat_template(llava_dir) or LLAVA_15_TEMPLATE, image_token)
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer("x")["input_ids"][:1] == [bos] and "bos_token" not in template:
        # LlavaProcessor tokenises the rendered prompt with the tokenizer's BOS; vLLM's chat path
        # tokenises it with add_special_tokens=False, so the template must carry the BOS itself
        template = "{{- bos_token -}}" + template
    tokenizer.chat_template = template
    tokenizer.save_pretrained(text_dir)

    vision_cfg.save_pretrained(adapter_dir / TOWER)
    save_file({k: v.contiguous() for k, v in tower.items()}, str(adapter_dir / TOWER / "model.safetensors"),
              metadata={"format": "pt"})
    processor = _processor_config(llava_dir)
    if processor is not None:
        (adapter_dir / TOWER / "preprocessor_config.json").write_text(json.dumps(processor, indent=1))
    save_file({k: v.contiguous() for k, v in projector.items()}, str(adapter_dir / PROJECTOR))
    layer = config.vision_feature_layer
    strategy = config.vision_feature_select_strategy  # LLaVA's "default" drops token 0, CLS or not
    strategy = "drop_first" if strategy == "default" else strategy
    (adapter_dir / MANIFEST).write_text(json.dumps({
        "kind": KIND, "base_model": base_fingerprint(text_dir), "version": "1",
        "config": {"feature_layer": list(layer) if isinstance(layer, list | tuple) else layer,
                   "select_strategy": strategy,
                   "projector_act": config.projector_hidden_act, "image_token": image_token,
                   "mean": (processor or {}).get("image_mean", [0.5] * 3),
                   "std": (processor or {}).get("image_std", [0.5] * 3)},
        "source": {"llava": llava_dir.name}}, indent=1))
    return text_dir, adapter_dir


def split_cached(llava_dir: Path, cache: Path) -> tuple[Path, Path]:
    """`split_llava` once per (checkpoint content, this module's code), atomically, under `cache`."""
    from floe.server.registry.snapshots import content_hash

    llava_dir = Path(llava_dir).resolve()
    code = hashlib.sha256(inspect.getsource(inspect.getmodule(split_cached)).encode()).hexdigest()
    key = hashlib.sha256((content_hash(llava_dir) + code).encode()).hexdigest()[:16]
    target = Path(cache) / "llava-split" / f"{llava_dir.name}-{key}"
    if not (target / LLM / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            split_llava(llava_dir, tmp)
            try:
                tmp.rename(target)
            except OSError:  # another process finished the same split first
                if not (target / LLM / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target / LLM, target / VISION


def build_tiny_llava(out: Path, tokenizer_dir: Path, *, seed: int = 0, image_size: int = 32,
                     patch_size: int = 8) -> Path:
    """A seeded, random-weight tiny LlavaForConditionalGeneration (CLIP tower + Llama), made offline
    with the tokenizer of `tokenizer_dir` plus an `<image>` token and llava-1.5's chat template."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(out)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, **ids)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_id, vision_feature_layer=-2,
                         vision_feature_select_strategy="default",
                         image_seq_length=(image_size // patch_size) ** 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
        with torch.no_grad():  # decisive greedy decoding, as the built-in base (server/models/builtin.py)
            model.lm_head.weight.normal_(0.0, 0.5)
            model.get_input_embeddings().weight.normal_(0.0, 1.0)
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(out, safe_serialization=True)
    side = {"height": image_size, "width": image_size}
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                                                     crop_size=side),
                               tokenizer=tokenizer, patch_size=patch_size, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=LLAVA_15_TEMPLATE)
    processor.save_pretrained(out)
    return out
