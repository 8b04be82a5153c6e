"""Time-LLM: forecasting by reprogramming a frozen LLM (docs/methods.md, Time-LLM).

The `timeseries` kind serves POST /v1/forecasts on the FrozenRuntime. This module is the
torch-free part (config, manifest); `model.py` holds the network and `train.py` the trainer.
An adapter directory holds `floe_adapter.json` (kind `timeseries`, the base checkpoint's
fingerprint, the config) and `model.safetensors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from floe.server.errors import InvalidRequest
from floe.server.kinds import KindConfig, RuntimeKind, register_kind, stacked_forward
from floe.server.schemas.forecasts import ForecastCall, ForecastResult

if TYPE_CHECKING:
    from floe.adapters.timeseries.model import TimeLLM
    from floe.server.kinds import AdapterInfo, EngineLimits
    from floe.server.runtime.engine import RuntimeBackbone

KIND = "timeseries"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class TimeLLMConfig(KindConfig):
    seq_len: int = 48  # lookback: the last seq_len points of a series are used
    horizon: int = 12
    patch_len: int = 16
    stride: int = 8
    d_model: int = 32
    n_heads: int = 4
    d_ff: int = 32
    num_prototypes: int = 100
    dropout: float = 0.0
    description: str = "A univariate time series."

    def __post_init__(self) -> None:
        if self.seq_len < self.patch_len or self.patch_len <= 0 or self.stride <= 0:
            raise ValueError("need seq_len >= patch_len > 0 and stride > 0")
        if self.horizon <= 0 or self.d_model % self.n_heads:
            raise ValueError("need horizon > 0 and d_model divisible by n_heads")

    @property
    def num_patches(self) -> int:
        return (self.seq_len - self.patch_len) // self.stride + 2



@dataclass(frozen=True)
class ForecastItem:
    """One validated request: its channels [N, seq_len] and the horizon it asked for."""

    series: Any  # torch.Tensor [channels, seq_len]
    horizon: int


@register_kind
class TimeseriesKind(RuntimeKind):
    name = KIND
    serves = ("forecasts",)
    trainer = "floe.adapters.timeseries.cli:train_timeseries"

    config = TimeLLMConfig
    files = (WEIGHTS,)

    def describe(self, directory: Path, manifest: dict[str, Any], cfg: TimeLLMConfig,
                 limits: EngineLimits) -> AdapterInfo:
        return self.info(manifest, seq_len=cfg.seq_len, horizon=cfg.horizon, description=cfg.description)

    # -- execution ---------------------------------------------------------------------------
    def load(self, directory: Path, backbone: RuntimeBackbone, ref: Any) -> TimeLLM:
        from floe.adapters.timeseries.model import load

        return load(directory, backbone.llm)

    def prepare(self, backbone: RuntimeBackbone, loaded: TimeLLM, request: ForecastCall) -> ForecastItem:
        from floe.adapters.timeseries.model import validate_series

        cfg, limits = loaded.cfg, backbone.config
        if not request.series:
            raise InvalidRequest("`series` must hold at least one channel", param="series")
        if len(request.series) > limits.max_series_per_request:
            raise InvalidRequest(f"at most {limits.max_series_per_request} channels per request",
                                 param="series")
        if request.horizon is not None and not 1 <= request.horizon <= cfg.horizon:
            raise InvalidRequest(f"horizon {request.horizon} is out of range: this adapter forecasts "
                                 f"1 to {cfg.horizon} steps", param="horizon", code="bad_horizon")
        series = validate_series(request.series, cfg, limits.max_series_length)
        return ForecastItem(series, request.horizon or cfg.horizon)

    def run(self, backbone: RuntimeBackbone, batch: list[tuple[TimeLLM, ForecastItem]]
            ) -> list[ForecastResult]:
        # every channel of every request of one adapter in one forward: [channels, adapter horizon]
        outs = stacked_forward(batch, lambda item: item.series, lambda net, x: net(backbone.llm, x))
        return [ForecastResult(forecasts=out[:, :item.horizon].tolist(), seq_len=net.cfg.seq_len,
                               horizon=item.horizon) for (net, item), out in zip(batch, outs, strict=True)]
