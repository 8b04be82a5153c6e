"""Typed messages that cross the gateway <-> FrozenRuntime boundary (Ray handles)."""

from __future__ import annotations

from dataclasses import dataclass

from floe.server.registry import AdapterRef

MINILM = "all-MiniLM-L6-v2"
MINILM_ALIASES = (MINILM, "sentence-transformers/all-MiniLM-L6-v2")


@dataclass(frozen=True)
class ForecastCall:
    ref: AdapterRef  # a leased `timeseries` adapter version
    series: list[list[float]]  # channels, each its own sequence
    horizon: int | None = None  # None = the adapter's horizon


@dataclass(frozen=True)
class ForecastResult:
    forecasts: list[list[float]]  # [channels][horizon]
    seq_len: int
    horizon: int


@dataclass(frozen=True)
class EmbedCall:
    inputs: list[str | list[int]]  # image_encoder adapters: `data:image/...;base64,...` strings
    ref: AdapterRef | None = None  # an `encoder` / `image_encoder` adapter; None = the base, FLAME defaults
    minilm: bool = False  # the packaged all-MiniLM-L6-v2 instead of the LLM


@dataclass(frozen=True)
class EmbedResult:
    vectors: list[list[float]]
    prompt_tokens: int
    normalized: bool = True


@dataclass(frozen=True)
class HiddenStatesCall:
    input_ids: list[list[int]]
    layers: tuple[int, ...] = (-1,)
    final_norm: bool = False


@dataclass(frozen=True)
class AttentionCall:
    input_ids: list[list[int]]
    layers: tuple[int, ...]
    query_positions: list[int]
    key_span: tuple[int, int]


@dataclass(frozen=True)
class RuntimeInfo:
    fingerprint: str
    num_layers: int
    hidden_size: int
    max_batch_size: int
