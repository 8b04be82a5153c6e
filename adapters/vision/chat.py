"""The chat rendering vLLM 0.32 does for `prompt_embeds` parts, with plain transformers.

What vLLM does (vllm/renderers/chat_utils.py, renderers/hf.py, read for this module):

1. The chat template's content format is detected from its AST: a template that loops over a
   message's content parts is "openai" (parts stay a list; a `prompt_embeds` part becomes the
   text part `<prompt_embeds>`, so the template joins parts its own way: floe's ChatML template
   concatenates them with nothing between), otherwise "string" (the parts' texts, the
   placeholder among them, joined with "\n").
2. `<prompt_embeds>` is registered on the tokenizer as an additional special token.
3. The template is rendered (`add_generation_prompt`, as the request says) and tokenised with
   `add_special_tokens=False` (what `apply_chat_template(tokenize=True)` does).
4. Each placeholder id is expanded to `tensor.shape[0]` copies; those positions take the tensor's
   rows (cast to the model dtype), every other position the token's embedding.

`content_format` reproduces step 1 by rendering a probe message (a template that iterates parts
prints the probe's text alone; one that prints `content` as a whole prints the list's repr);
tests/adapters/test_vision.py checks it agrees with vLLM's own detector on the templates floe
serves. A text part that contains the literal placeholder is refused by vLLM (400).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLACEHOLDER = "<prompt_embeds>"  # vllm.renderers.chat_utils.PROMPT_EMBEDS_PLACEHOLDER_TOKEN
EMBED_PARTS = ("prompt_embeds", "image_url")  # parts that become one placeholder each
TEXT_PARTS = ("text", "input_text", "output_text", "refusal")
_PROBE = "floe-probe-7f3a"
_KEPT_KEYS = ("name", "tool_calls", "tool_call_id")


def content_format(tokenizer: Any) -> str:
    """"openai" when the chat template iterates content parts, else "string"."""
    probe = [{"role": "user", "content": [{"type": "text", "text": _PROBE}]}]
    try:
        rendered = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    except Exception:  # a string-only template may fail on list content
        return "string"
    return "openai" if _PROBE in rendered and "'text'" not in rendered else "string"


def _part_text(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    kind = part.get("type", "text") if isinstance(part, dict) else None
    if kind in EMBED_PARTS:
        return PLACEHOLDER
    if kind in TEXT_PARTS:
        return str(part.get("text", part.get("refusal", "")))
    raise ValueError(f"unsupported content part {kind!r}")


def conversation(messages: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """The messages as vLLM hands them to the chat template (image / embeds parts as placeholders)."""
    out = []
    for message in messages:
        content = message.get("content")
        parts = [] if content is None else [content] if isinstance(content, str) else list(content)
        texts = [_part_text(p) for p in parts]
        rendered: Any = ([{"type": "text", "text": t} for t in texts] if fmt == "openai"
                         else "\n".join(t for t in texts if t is not None))
        item = {"role": message["role"], "content": rendered}
        item.update({k: message[k] for k in _KEPT_KEYS if message.get(k) is not None})
        out.append(item)
    return out


def placeholder_tokenizer(model_dir: Path | str) -> tuple[Any, int]:
    """The base tokenizer with `<prompt_embeds>` registered as vLLM registers it, and its id."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [PLACEHOLDER]})
    ids = tokenizer.encode(PLACEHOLDER, add_special_tokens=False)
    if len(ids) != 1:
        raise RuntimeError(f"{PLACEHOLDER!r} does not tokenize to one token: {ids}")
    return tokenizer, ids[0]


def render_ids(tokenizer: Any, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
               fmt: str | None = None) -> list[int]:
    """Token ids of the rendered chat, one placeholder id per image / embeds part (unexpanded)."""
    fmt = fmt or content_format(tokenizer)
    for message in messages:
        for part in message.get("content") if isinstance(message.get("content"), list) else ():
            text = _part_text(part)
            kind = part.get("type", "text") if isinstance(part, dict) else "text"
            if kind not in EMBED_PARTS and text is not None and PLACEHOLDER in text:
                raise ValueError(f"text may not contain the reserved placeholder {PLACEHOLDER!r}")
    text = tokenizer.apply_chat_template(conversation(messages, fmt), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def expand(ids: list[int], placeholder_id: int, lengths: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """Each placeholder id -> `lengths[k]` copies; returns the ids and the (start, length) spans."""
    if ids.count(placeholder_id) != len(lengths):
        raise ValueError(f"expected {len(lengths)} placeholders in the rendered prompt, "
                         f"found {ids.count(placeholder_id)}")
    out: list[int] = []
    spans: list[tuple[int, int]] = []
    k = 0
    for token in ids:
        if token == placeholder_id:
            spans.append((len(out), lengths[k]))
            out += [placeholder_id] * lengths[k]
            k += 1
        else:
            out.append(token)
    return out, spans
