"""The one typed message that crosses the gateway <-> FrozenRuntime boundary (Ray handles).

The request and result types are the endpoint family's contract with the kinds that serve it
(e.g. `ForecastCall` / `ForecastResult` in server/schemas/forecasts.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from floe.server.registry import AdapterRef


@dataclass(frozen=True)
class RuntimeCall:
    kind: str  # the adapter kind that runs it
    request: Any  # the family's request type
    ref: AdapterRef | None = None  # a leased adapter version of `kind`; None = a built-in model
    builtin: str = ""  # with no ref: the kind's built-in model ("" = its default on the base)
