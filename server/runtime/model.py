"""FrozenModel: the frozen base checkpoint through transformers, behind a narrow interface.

What vLLM cannot give, one forward pass each:
    forward(inputs_embeds | input_ids, mask)         -> hidden states of chosen layers
    hidden states before or after the final norm      (layer k = output of decoder layer k)
    attentions(query positions, key span)             -> eager attention probabilities
The weights are frozen (no grad on parameters); gradients still flow to `inputs_embeds`, which
is how adapters are trained against the same object that serves them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from floe.server.errors import InvalidRequest


@lru_cache(maxsize=8)
def _fingerprint(path: str, stamp: tuple) -> str:
    from floe.server.registry.snapshots import files_digest

    return files_digest(Path(path), [Path(name) for name, _, _ in stamp])


def base_fingerprint(model_dir: Path | str) -> str:
    """Content hash of a checkpoint (config + safetensors): what an adapter's `base_model` names."""
    root = Path(model_dir)
    files = [root / "config.json", *sorted(root.glob("*.safetensors"))]
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists())
    return _fingerprint(str(root.resolve()), stamp)


@dataclass(frozen=True)
class Batch:
    """Left-padded model input: `inputs_embeds` [B, T, d] (or `input_ids` [B, T]) + mask [B, T]."""

    attention_mask: torch.Tensor
    inputs_embeds: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None

    @property
    def position_ids(self) -> torch.Tensor:
        # NOTE: left padding; every row's first real token is position 0, as if it ran alone.
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class FrozenModel:
    def __init__(self, model_dir: Path | str, dtype: str = "float32", device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.dtype = getattr(torch, dtype)
        # NOTE: eager attention: the only implementation that returns attention probabilities.
        self.lm = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=self.dtype, attn_implementation="eager").to(device).eval()
        self.lm.requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.config = self.lm.config
        self.num_layers: int = self.config.num_hidden_layers
        self.hidden_size: int = self.config.hidden_size
        self.fingerprint = base_fingerprint(self.model_dir)
        self.lock = threading.Lock()  # one forward at a time per replica

    @property
    def decoder(self):
        return self.lm.model

    @property
    def word_embeddings(self) -> torch.Tensor:
        """The frozen token embedding matrix [vocab, d_llm]."""
        return self.decoder.embed_tokens.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(input_ids)

    def layer_index(self, layer: int) -> int:
        """Normalise `layer`: 0 = embeddings, k = output of decoder layer k, -1 = the last layer."""
        index = layer if layer >= 0 else self.num_layers + 1 + layer
        if not 0 <= index <= self.num_layers:
            raise InvalidRequest(f"layer {layer} out of range for a {self.num_layers}-layer model",
                                 param="layer")
        return index

    def hidden_states(self, batch: Batch, layers: tuple[int, ...] = (-1,),
                      final_norm: bool = False) -> list[torch.Tensor]:
        """Per requested layer, the residual stream [B, T, d], optionally through the final norm."""
        indices = [self.layer_index(layer) for layer in layers]
        pre_norm: dict[str, torch.Tensor] = {}
        hook = self.decoder.norm.register_forward_hook(
            lambda _m, args, _o: pre_norm.__setitem__("last", args[0]))
        try:
            out = self.decoder(input_ids=batch.input_ids, inputs_embeds=batch.inputs_embeds,
                               attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                               output_hidden_states=True, use_cache=False)
        finally:
            hook.remove()
        # NOTE: transformers puts the *normed* last layer at hidden_states[-1]; the hook kept
        # the residual stream that went into the norm.
        states = list(out.hidden_states[:-1]) + [pre_norm["last"]]
        result = []
        for i in indices:
            h = states[i]
            result.append(self.decoder.norm(h) if final_norm else h)
        return result

    def attentions(self, batch: Batch, layers: tuple[int, ...], query_positions: list[int],
                   key_span: tuple[int, int]) -> torch.Tensor:
        """Attention probabilities [B, len(layers), heads, len(query_positions), span] (eager)."""
        indices = []
        for layer in layers:
            index = self.layer_index(layer)
            if index == 0:
                raise InvalidRequest("layer 0 (embeddings) has no attention", param="layers")
            indices.append(index - 1)
        seq = batch.attention_mask.shape[1]
        start, end = key_span
        if not 0 <= start < end <= seq:
            raise InvalidRequest(f"key span {key_span} outside a sequence of {seq}", param="key_span")
        if any(not -seq <= q < seq for q in query_positions):
            raise InvalidRequest(f"query positions outside a sequence of {seq}", param="query_positions")
        out = self.decoder(input_ids=batch.input_ids, inputs_embeds=batch.inputs_embeds,
                           attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                           output_attentions=True, use_cache=False)
        picked = torch.stack([out.attentions[i] for i in indices], dim=1)  # [B, L, H, T, T]
        return picked[:, :, :, query_positions, start:end]

    # -- tokenisation helpers ---------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def pad_ids(self, sequences: list[list[int]]) -> Batch:
        """Left-pad token id lists into a Batch."""
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            if seq:
                ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
                mask[row, width - len(seq):] = 1
        return Batch(attention_mask=mask, input_ids=ids)

    def pad_embeds(self, sequences: list[torch.Tensor]) -> Batch:
        """Left-pad [T_i, d] embedding sequences into a Batch (padding rows are zeros, masked)."""
        width = max(s.shape[0] for s in sequences)
        d = sequences[0].shape[-1]
        embeds = sequences[0].new_zeros((len(sequences), width, d))
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            embeds[row, width - seq.shape[0]:] = seq
            mask[row, width - seq.shape[0]:] = 1
        return Batch(attention_mask=mask, inputs_embeds=embeds)
