"""Run a decoder one layer at a time on calibration tokens (GPTQ, SparseGPT, QLLM, Wanda share this)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

from floe.quant.progress import report

T = TypeVar("T")


class _Stop(Exception):
    pass


@torch.no_grad()
def capture_layer_inputs(model, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """(hidden states entering decoder layer 0 ``[n, T, d]``, the kwargs every layer gets)."""
    layer0 = model.model.layers[0]
    seen: dict = {}

    def hook(_mod, args, kwargs):
        seen["hs"] = args[0] if args else kwargs.pop("hidden_states")
        seen["kw"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Stop

    h = layer0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=input_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        h.remove()
    kw = seen["kw"]
    kw["use_cache"] = False
    kw.pop("past_key_values", None)
    kw.pop("past_key_value", None)
    return seen["hs"], kw


def run_layer(layer: nn.Module, hs: torch.Tensor, kw: dict) -> torch.Tensor:
    out = layer(hs, **kw)
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def record_inputs(modules: dict[str, nn.Linear]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """While active, appends each linear's input ``[tokens, in]`` to ``record[name]``."""
    record: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    hooks = [m.register_forward_hook(lambda _m, a, _o, n=n: record[n].append(a[0].reshape(-1, a[0].shape[-1]).detach()))
             for n, m in modules.items()]
    try:
        yield record
    finally:
        for h in hooks:
            h.remove()


def layer_linears(model, layer_idx: int) -> dict[str, nn.Linear]:
    """Full dotted names (as in the model's state dict) -> linear modules of one decoder layer."""
    layer = model.model.layers[layer_idx]
    prefix = f"model.layers.{layer_idx}."
    return {prefix + n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def sequential(model, input_ids: torch.Tensor, label: str,
               per_linear: Callable[[str, nn.Linear, torch.Tensor], T]) -> dict[str, T]:
    """The calibration loop of the one-shot methods: layer by layer, each linear's inputs are
    recorded (``X [tokens, in]``, float32) from the outputs of the layers already processed, so
    later layers compensate for the earlier layers' errors. ``per_linear(name, linear, X)``
    rewrites the linear's weight in place and returns what the method keeps for it."""
    hs, kw = capture_layer_inputs(model, input_ids)
    kept: dict[str, T] = {}
    layers = model.model.layers
    for idx, layer in enumerate(layers):
        linears = layer_linears(model, idx)
        with record_inputs(linears) as rec:
            run_layer(layer, hs, kw)
        for name, lin in linears.items():
            kept[name] = per_linear(name, lin, torch.cat(rec[name]).float())
        hs = run_layer(layer, hs, kw)  # the next layer sees this one's outputs after the change
        report(f"{label} layers", idx + 1, len(layers))
    return kept
