"""Wire types of POST /v1/forecasts."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class ForecastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, description="A timeseries adapter: name[@version].")
    series: list[list[float]] | list[float] = Field(
        ..., description="One series, or several channels (each forecast as its own sequence).")
    horizon: int | None = Field(None, description="Steps to forecast; default and maximum: the adapter's.")
    timestamps: list[str] | None = Field(None, description="ISO timestamps of the points (shared by channels).")
    frequency: str | None = Field(None, description="pandas offset alias (e.g. `MS`, `D`, `h`); default: inferred.")

    def channels(self) -> list[list[float]]:
        if self.series and not isinstance(self.series[0], list):
            return [list(self.series)]  # type: ignore[arg-type]
        return [list(c) for c in self.series]  # type: ignore[union-attr]


class ForecastChannel(BaseModel):
    index: int
    values: list[float]
    timestamps: list[str] | None = None


class ForecastResponse(BaseModel):
    object: str = "forecast"
    model: str
    horizon: int
    lookback: int
    forecasts: list[ForecastChannel]


# -- the family's contract with the kinds that serve it (crosses to the FrozenRuntime) ----------
@dataclass(frozen=True)
class ForecastCall:
    series: list[list[float]]  # channels, each its own sequence
    horizon: int | None = None  # None = the adapter's horizon


@dataclass(frozen=True)
class ForecastResult:
    forecasts: list[list[float]]  # [channels][horizon]
    seq_len: int
    horizon: int
