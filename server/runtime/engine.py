"""RuntimeEngine: the FrozenRuntime's compute, free of Ray and HTTP (so it is testable as is).

One FrozenModel per replica, shared by every adapter on it. Every kind runs through the same
three calls (server/kinds.py): `load` an adapter (or a kind's built-in model), `prepare` one
request against it (all validation), `run_batch` over prepared items of any kinds and adapters,
which hands each kind its own items in one call, and returns results in the items' order.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from floe.server.config import RuntimeConfig
from floe.server.errors import InvalidRequest
from floe.server.kinds import RuntimeKind, get_kind
from floe.server.registry import AdapterRef
from floe.server.runtime.model import FrozenModel


@dataclass(frozen=True)
class RuntimeBackbone:
    """What a kind's execution part gets: the shared frozen base and the runtime's limits."""

    llm: FrozenModel
    config: RuntimeConfig

    @classmethod
    def from_config(cls, config: Any) -> RuntimeBackbone:
        """The served base checkpoint of a FloeConfig, loaded once per replica for every kind."""
        from floe.server.models import resolve_base_model

        model_dir, _ = resolve_base_model(config)
        return cls(FrozenModel(model_dir, config.runtime.dtype), config.runtime)


@dataclass(eq=False)
class Resident:
    """An adapter version (or a kind's built-in model) resident in this replica."""

    kind: RuntimeKind
    value: Any
    ref: AdapterRef | None = None

    @property
    def label(self) -> str:
        return f"`{self.ref.name}`" if self.ref else "this model"


def runtime_kind(name: str) -> RuntimeKind:
    kind = get_kind(name)
    if not isinstance(kind, RuntimeKind):
        raise InvalidRequest(f"adapter kind {name!r} does not run on the FrozenRuntime", param="model")
    return kind


class RuntimeEngine:
    def __init__(self, llm: FrozenModel, config: RuntimeConfig) -> None:
        self.backbone = RuntimeBackbone(llm, config)
        self._builtins: dict[tuple[str, str], Resident] = {}
        self._builtin_lock = threading.Lock()

    @property
    def llm(self) -> FrozenModel:
        return self.backbone.llm

    def load_adapter(self, ref: AdapterRef, path: Path) -> Resident:
        kind = runtime_kind(ref.kind)
        return Resident(kind, kind.load(Path(path), self.backbone, ref), ref)

    def builtin(self, kind_name: str, name: str = "") -> Resident:
        """A kind's adapter-less model (loaded once per replica, on first use)."""
        with self._builtin_lock:
            key = (kind_name, name)
            if key not in self._builtins:
                kind = runtime_kind(kind_name)
                self._builtins[key] = Resident(kind, kind.builtin(name, self.backbone))
            return self._builtins[key]

    def prepare(self, resident: Resident, request: Any) -> Any:
        return resident.kind.prepare(self.backbone, resident.value, request)

    def run_batch(self, items: list[tuple[Resident, Any]]) -> list[Any]:
        """items: (resident, prepared item) per request -> finished results, in the same order."""
        by_kind: dict[str, list[int]] = defaultdict(list)
        for i, (resident, _) in enumerate(items):
            by_kind[resident.kind.name].append(i)
        results: list[Any] = [None] * len(items)
        with self.llm.lock:
            for indices in by_kind.values():
                kind = items[indices[0]][0].kind
                outs = kind.run(self.backbone, [(items[i][0].value, items[i][1]) for i in indices])
                for i, out in zip(indices, outs):
                    results[i] = kind.finish(out)
        return results
