"""Capability routing: which engine deployment serves an adapter kind's capability (DESIGN.md)."""

from __future__ import annotations

from typing import Literal

EngineName = Literal["llm", "runtime"]

# vLLM serves generation (LoRA, prompt embeddings); everything that needs hidden states,
# attentions, sessions or custom heads runs on the FrozenRuntime.
ENGINE_BY_CAPABILITY: dict[str, EngineName] = {
    "generate": "llm", "prompt_embeds": "llm",
    "hidden_states": "runtime", "attentions": "runtime", "session": "runtime", "logits_head": "runtime",
}


def engine_for(capability: str) -> EngineName:
    return ENGINE_BY_CAPABILITY.get(capability, "llm")
