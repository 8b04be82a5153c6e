"""One registry of quantization and pruning methods.

A method is a function ``run(model_dir, config, calibration, work_dir) -> MethodResult`` plus a
pydantic config class; ``@register_method("nf4", kind="quantize", config=BnbConfig)`` adds it.
Third parties plug in through the ``floe.quant.methods`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from floe.quant.errors import UnknownMethodError

Kind = Literal["quantize", "prune"]


class MethodConfig(BaseModel):
    """Base of every method config: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class MethodResult:
    """What a method reports back; the API turns it into the manifest."""

    engine: Literal["vllm", "transformers"]
    load_kwargs: dict[str, Any]
    bits: int | None = None
    group_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


RunFn = Callable[[Path, BaseModel, "list[str] | None", Path], MethodResult]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    kind: Kind
    config_cls: type[BaseModel]
    run: RunFn
    needs_calibration: bool


BUILTIN_MODULES = ("bnb", "gptq", "sparsity", "sparsegpt", "maskllm", "qllm")
_METHODS: dict[str, MethodSpec] = {}
_LOADED = False


def register_method(name: str, *, kind: Kind, config: type[BaseModel], needs_calibration: bool = False):
    """Decorator: register ``fn`` as method ``name`` of ``kind`` with config class ``config``."""

    def deco(fn: RunFn) -> RunFn:
        _METHODS[name] = MethodSpec(name, kind, config, fn, needs_calibration)
        return fn

    return deco


def _load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    # NOTE: importing the modules runs their @register_method decorators.
    for mod in BUILTIN_MODULES:
        import_module(f"floe.quant.methods.{mod}")

    for ep in entry_points(group="floe.quant.methods"):
        ep.load()


def get_method(name: str, kind: Kind | None = None) -> MethodSpec:
    _load_builtin()
    spec = _METHODS.get(name)
    if spec is None or (kind is not None and spec.kind != kind):
        raise UnknownMethodError(
            f"unknown {kind or 'quant'} method {name!r}; registered: {', '.join(list_methods(kind))}"
        )
    return spec


def list_methods(kind: Kind | None = None) -> list[str]:
    _load_builtin()
    return sorted(n for n, s in _METHODS.items() if kind is None or s.kind == kind)
