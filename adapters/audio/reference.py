"""The APT reference: the embedding sequence vLLM builds for an audio chat, with plain transformers.

What vLLM 0.32 does with `--enable-prompt-embeds` (renderers/chat_utils.py, renderers/hf.py):
  1. registers `<prompt_embeds>` as an additional special token of the base tokenizer;
  2. renders each `prompt_embeds` part as a text part holding that one token: with an "openai"
     content-format template (the built-in ChatML one, which loops over the parts) the parts go to
     the template as `{"type": "text", "text": ...}` (a string content becomes one such part);
     with a "string" one they are joined with "\n" first;
  3. applies the chat template (add_generation_prompt) and tokenizes;
  4. expands the i-th placeholder into len(tensor_i) copies and takes, at those positions, the
     tensor's rows instead of the token embeddings.
The same steps here, then `AutoModelForCausalLM.generate(inputs_embeds=..., do_sample=False)`.
The soft tokens of each clip come from the adapter (decode, fbank, encoder, Q-Former, as served);
a `prompt_embeds` part already in `messages` is used as it is.
"""

from __future__ import annotations

import base64
import io
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from floe.adapters.audio.model import LoadedAudio, clip_pcm, instruction_of, load_for_serving

PLACEHOLDER = "<prompt_embeds>"  # vllm.renderers.chat_utils.PROMPT_EMBEDS_PLACEHOLDER_TOKEN
ContentFormat = Literal["openai", "string"]


@lru_cache(maxsize=4)
def base_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().requires_grad_(False)


def placeholder_tokenizer(model_dir: Path):
    """The base tokenizer with vLLM's placeholder registered, and the placeholder's id."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [PLACEHOLDER]})
    (pid,) = tokenizer.encode(PLACEHOLDER, add_special_tokens=False)
    return tokenizer, pid


def is_clip(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in ("input_audio", "prompt_embeds")


def placeholder_conversation(messages: list[dict[str, Any]], content_format: ContentFormat = "openai"
                             ) -> list[dict[str, Any]]:
    """Messages as vLLM hands them to the chat template, each clip a placeholder text part."""
    out = []
    for message in messages:
        content = message.get("content")
        if content is None:
            content = []
        elif isinstance(content, str):
            content = [{"type": "text", "text": content}]
        texts = [PLACEHOLDER if is_clip(p) else p if isinstance(p, str) else p["text"] for p in content
                 if isinstance(p, str) or is_clip(p) or (isinstance(p, dict) and p.get("type") == "text")]
        if content_format == "string":
            out.append({"role": message["role"], "content": "\n".join(texts)})
        else:
            out.append({"role": message["role"], "content": [{"type": "text", "text": t} for t in texts]})
    return out


def render(tokenizer, conversation: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
    ids = tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=add_generation_prompt,
                                        return_dict=False)
    return list(ids)


def clip_tensors(loaded: LoadedAudio, messages: list[dict[str, Any]]) -> list[torch.Tensor]:
    """[1 + N, d] per clip, in the order of the prompt."""
    out = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not is_clip(part):
                continue
            if part["type"] == "prompt_embeds":
                out.append(torch.load(io.BytesIO(base64.b64decode(part["data"])), weights_only=True))
                continue
            pcm = clip_pcm(part, f"messages[{i}].content[{j}].input_audio", loaded.max_bytes, loaded.max_audio_s)
            out.append(loaded.tokens(pcm, instruction_of(content)))
    return out


def splice(token_embeds: torch.Tensor, ids: list[int], pid: int, clips: list[torch.Tensor]
           ) -> tuple[torch.Tensor, list[int]]:
    """Expand each placeholder id into len(clip) copies and put the clip's rows there."""
    positions = [k for k, t in enumerate(ids) if t == pid]
    if len(positions) != len(clips):
        raise ValueError(f"{len(positions)} placeholders for {len(clips)} clips")
    rows, expanded, start = [], [], 0
    for pos, clip in zip(positions, clips):
        rows += [token_embeds[start:pos], clip.to(token_embeds.dtype)]
        expanded += ids[start:pos] + [pid] * clip.shape[0]
        start = pos + 1
    rows.append(token_embeds[start:])
    expanded += ids[start:]
    return torch.cat(rows), expanded


def as_loaded(model_dir: Path, adapter: Path | LoadedAudio) -> LoadedAudio:
    if isinstance(adapter, LoadedAudio):
        return adapter
    from floe.server.config import MediaConfig

    return load_for_serving(Path(adapter), Path(model_dir), MediaConfig())


@torch.no_grad()
def reference_inputs_embeds(model_dir: Path, adapter: Path | LoadedAudio, messages: list[dict[str, Any]],
                            content_format: ContentFormat = "openai") -> tuple[torch.Tensor, list[int]]:
    """(inputs_embeds [1, T, d], the expanded prompt token ids, placeholders included)."""
    clips = clip_tensors(as_loaded(model_dir, adapter), messages)
    tokenizer, pid = placeholder_tokenizer(model_dir)
    ids = render(tokenizer, placeholder_conversation(messages, content_format))
    model = base_model(str(model_dir))
    table = model.get_input_embeddings().weight
    safe = torch.tensor([0 if t == pid else t for t in ids])  # the placeholder is outside the vocabulary
    embeds, expanded = splice(table[safe], ids, pid, clips)
    return embeds[None], expanded


@torch.no_grad()
def reference_tokens(model_dir: Path, adapter: Path | LoadedAudio, messages: list[dict[str, Any]],
                     max_tokens: int = 16, content_format: ContentFormat = "openai") -> list[int]:
    """Greedy completion token ids (the final eos dropped, as in vLLM's text) for `messages`."""
    embeds, _ = reference_inputs_embeds(model_dir, adapter, messages, content_format)
    model = base_model(str(model_dir))
    out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                         do_sample=False, max_new_tokens=max_tokens)
    tokens = out[0].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for k, t in enumerate(tokens):
        if t in eos:
            return tokens[:k]
    return tokens
