"""Forecasts: lease the timeseries adapter, run the FrozenRuntime, attach timestamps."""

from __future__ import annotations

from typing import Any

from floe.server.errors import InvalidRequest, call
from floe.server.names import split_model
from floe.server.runtime.messages import RuntimeCall
from floe.server.schemas.forecasts import (
    ForecastCall,
    ForecastChannel,
    ForecastRequest,
    ForecastResponse,
    ForecastResult,
)
from floe.server.services.leases import leased

FAMILY = "forecasts"


class ForecastService:
    def __init__(self, base_name: str, runtime: Any, registry: Any) -> None:
        self._base_name, self._runtime, self._registry = base_name, runtime, registry

    async def forecast(self, req: ForecastRequest) -> ForecastResponse:
        adapter = split_model(req.model, self._base_name)
        if adapter is None:
            raise InvalidRequest("forecasts need a timeseries adapter in `model`, not the base model",
                                 param="model")
        channels = req.channels()
        anchor = self._anchor(req, channels)
        async with leased(self._registry, adapter, FAMILY) as ref:
            handle = self._runtime.options(multiplexed_model_id=ref.model_id)
            result: ForecastResult = await call(handle.run.remote(RuntimeCall(
                kind=ref.kind, ref=ref, request=ForecastCall(series=channels, horizon=req.horizon))))
        stamps = _future(anchor, result.horizon) if anchor else None
        return ForecastResponse(
            model=req.model, horizon=result.horizon, lookback=result.seq_len,
            forecasts=[ForecastChannel(index=i, values=v, timestamps=stamps)
                       for i, v in enumerate(result.forecasts)])

    @staticmethod
    def _anchor(req: ForecastRequest, channels: list[list[float]]) -> tuple[Any, Any] | None:
        """(last timestamp, frequency) when the request has timestamps; 400 when they are unusable."""
        if req.timestamps is None:
            if req.frequency is not None:
                raise InvalidRequest("`frequency` needs `timestamps` to anchor the forecast",
                                     param="frequency")
            return None
        import pandas as pd

        if any(len(c) != len(req.timestamps) for c in channels):
            raise InvalidRequest("`timestamps` must have one entry per point of each series",
                                 param="timestamps")
        try:
            index = pd.DatetimeIndex(pd.to_datetime(req.timestamps))
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"unparseable timestamps: {exc}", param="timestamps") from exc
        freq = req.frequency or (pd.infer_freq(index) if len(index) >= 3 else None)
        if freq is None:
            raise InvalidRequest("cannot infer a frequency from `timestamps`; give `frequency`",
                                 param="frequency")
        try:
            offset = pd.tseries.frequencies.to_offset(freq)
        except ValueError as exc:
            raise InvalidRequest(f"unknown frequency {freq!r}", param="frequency") from exc
        return index[-1], offset


def _future(anchor: tuple[Any, Any], horizon: int) -> list[str]:
    import pandas as pd

    last, offset = anchor
    return [t.isoformat() for t in pd.date_range(last, periods=horizon + 1, freq=offset)[1:]]
