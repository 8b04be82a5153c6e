"""The adapter-kind seam: a kind owns its whole life, the way LitServe's `LitAPI` owns a model's.

    manifest(directory, limits)          torch-free: parse, validate against the engine, describe
    runtime kinds (FrozenRuntime):
      builtin(name, backbone)            an adapter-less model of the kind (e.g. the base encoder)
      load(directory, backbone, ref)     weights onto the shared frozen base
      prepare(backbone, loaded, request) all validation, before batching: a bad request never
                                         joins a batch, so it cannot fail its neighbours
      run(backbone, batch)               one call for [(loaded, item), ...] of several adapters
      finish(out)                        -> the endpoint family's result type
    llm kinds (LLMServer, vLLM):
      load / unload                      e.g. a LoRA into vLLM's multi-LoRA
      rewrite_request(loaded, call)      e.g. media parts -> prompt embeddings
      rewrite_response(loaded, call, frames)   e.g. tool-token ids -> `tool_calls`

A kind module imports torch only inside its execution methods (or in a submodule those import),
so the gateway and the registry read manifests without torch or vLLM. Kinds register with
`@register_kind`; floe finds every kind, its own included, through the `floe.adapters`
entry-point group, so nothing in floe names a kind. ARCHITECTURE.md, "Adding an adapter kind".
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from floe.server.errors import InvalidRequest

MANIFEST = "floe_adapter.json"
MAX_SAFETENSORS_HEADER = 64 * 2**20
ENTRY_POINTS = "floe.adapters"

EngineName = Literal["llm", "runtime"]


class InvalidAdapter(InvalidRequest):
    code = "invalid_adapter"


@dataclass(frozen=True)
class EngineLimits:
    """What the serving engine accepts; kinds validate adapters against it before loading."""

    max_lora_rank: int = 64


@dataclass(frozen=True)
class AdapterInfo:
    """What a kind found in a valid adapter directory."""

    kind: str
    engine: EngineName
    serves: tuple[str, ...]  # endpoint families that answer with it ("chat", "forecasts", ...)
    accepts: tuple[str, ...] = ()  # request content part types it consumes ("image_url", ...)
    base_model: str | None = None
    version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class KindConfig:
    """Mixin for a kind's frozen dataclass config (the manifest's `config` object).

    `from_dict` ignores keys the dataclass does not know (a newer writer's extras); `public` is
    the JSON written back, tuples as lists. Validation belongs in the dataclass's `__post_init__`.
    """

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        if not isinstance(data, dict):
            raise ValueError("config must be an object")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})

    def public(self) -> dict[str, Any]:
        out = asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from a safetensors file's header (torch-free: an 8-byte length, then
    JSON), for a kind's `manifest`; a file that is not safetensors is a 400 naming it."""
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > MAX_SAFETENSORS_HEADER:
                raise ValueError("header too large")
            header = json.loads(fh.read(length))
        return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidAdapter(f"{Path(path).name} is not a safetensors file (unreadable header: {exc})",
                             param="source") from exc


class AdapterKind:
    """One adapter kind. Subclasses set `name` / `serves` and implement `manifest`."""

    name: ClassVar[str]
    engine: ClassVar[EngineName]
    serves: ClassVar[tuple[str, ...]]
    accepts: ClassVar[tuple[str, ...]] = ()  # chat content part types it turns into soft tokens
    # `module:function` of a typer command, mounted as `floe adapters train <name>` (optional)
    trainer: ClassVar[str | None] = None
    # `module:function(base_dir: Path, out: Path) -> Path`: the kind's demo adapter for a built-in
    # base, built offline and deterministically; the default `floe serve` serves it (optional)
    demo: ClassVar[str | None] = None
    # Hugging Face architectures this kind claims, each -> `module:function(checkpoint: Path, cache:
    # Path) -> (text LLM dir, adapter dir)`: `floe serve --model` on such a checkpoint serves the text
    # LLM on vLLM and the adapter under the checkpoint's name (e.g. LLaVA -> vision)
    splits: ClassVar[dict[str, str]] = {}
    # the manifest's `config` object, parsed by `manifest` (a KindConfig dataclass; optional)
    config: ClassVar[type[KindConfig] | None] = None
    # files every adapter directory of the kind holds, checked by `manifest`
    files: ClassVar[tuple[str, ...]] = ()
    # whether the manifest must name the base checkpoint the adapter was trained on
    needs_base: ClassVar[bool] = True

    @classmethod
    def detect(cls, directory: Path) -> bool:
        """Whether `directory`, which has no floe_adapter.json, is a checkpoint in a published layout
        this kind reads as it is (its `manifest` and `load` then take it): so such a checkpoint is
        registered without being converted. Keep it cheap and torch-free: it runs per kind."""
        return False

    def manifest(self, directory: Path, limits: EngineLimits) -> AdapterInfo:
        """Template: the kind's own manifest, its `config` and its `files` are checked here, once
        for every kind; what only this kind knows about its directories is in `describe`."""
        directory = Path(directory)
        manifest = self.own_manifest(directory)
        cfg = self.parse_config(manifest)
        self.require_files(directory, *self.files)
        return self.describe(directory, manifest, cfg, limits)

    def describe(self, directory: Path, manifest: dict[str, Any], cfg: Any,
                 limits: EngineLimits) -> AdapterInfo:
        """The kind's own checks of a directory `manifest` accepted so far, and what it found."""
        return self.info(manifest, **(cfg.public() if cfg is not None else {}))

    def info(self, manifest: dict[str, Any], **details: Any) -> AdapterInfo:
        return AdapterInfo(kind=self.name, engine=self.engine, serves=tuple(self.serves),
                           accepts=tuple(self.accepts), base_model=manifest.get("base_model"),
                           version=manifest.get("version"), details=details)

    @staticmethod
    def read_manifest(directory: Path) -> dict[str, Any]:
        return AdapterKind.read_json(directory, MANIFEST) or {}

    def own_manifest(self, directory: Path) -> dict[str, Any]:
        """The manifest of an adapter of this kind: it says `"kind": <name>` and names its base."""
        manifest = self.read_manifest(directory)
        if manifest.get("kind") != self.name:
            raise InvalidAdapter(f'{MANIFEST} must say "kind": "{self.name}"', param="source")
        if self.needs_base and (not isinstance(manifest.get("base_model"), str) or not manifest["base_model"]):
            raise InvalidAdapter(f"{MANIFEST} must name the adapter's base_model (the fingerprint of "
                                 "the base checkpoint it was trained on)", param="source")
        return manifest

    def parse_config(self, manifest: dict[str, Any]) -> Any:
        """The manifest's `config` as the kind's `config` dataclass (None for a kind without one)."""
        if self.config is None:
            return None
        try:
            return self.config.from_dict(manifest.get("config") or {})
        except (TypeError, ValueError) as exc:
            raise InvalidAdapter(f"{MANIFEST}: bad {self.name} config: {exc}", param="source") from exc

    def read_config(self, directory: Path) -> Any:
        """An adapter directory's parsed config, for the kind's loaders (the manifest checked it)."""
        return self.parse_config(self.read_manifest(directory))

    @staticmethod
    def require_model_dir(directory: Path, sub: str, what: str) -> dict[str, Any]:
        """A Hugging Face model folder inside an adapter (its config.json and safetensors)."""
        config = AdapterKind.read_json(directory, f"{sub}/config.json")
        if config is None:
            raise InvalidAdapter(f"this adapter kind needs {sub}/config.json ({what})", param="source")
        if not any((Path(directory) / sub).glob("*.safetensors")):
            raise InvalidAdapter(f"this adapter kind needs {sub}/*.safetensors ({what})", param="source")
        return config

    @staticmethod
    def read_json(directory: Path, name: str) -> dict[str, Any] | None:
        """A JSON object file of an adapter directory; None when absent, 400 when malformed."""
        path = Path(directory) / name
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidAdapter(f"{name} is not valid JSON: {exc}", param="source") from exc
        if not isinstance(data, dict):
            raise InvalidAdapter(f"{name} must be a JSON object", param="source")
        return data

    @staticmethod
    def require_files(directory: Path, *names: str) -> None:
        for name in names:
            if not (Path(directory) / name).exists():
                raise InvalidAdapter(f"this adapter kind needs {name}", param="source")

    @staticmethod
    def check_base(manifest: dict[str, Any], fingerprint: str) -> None:
        """Refuse an adapter made for another base checkpoint (its `base_model` fingerprint)."""
        if manifest.get("base_model") != fingerprint:
            raise InvalidAdapter(f"adapter was trained for base {str(manifest.get('base_model'))[:12]!r}, "
                                 f"this runtime serves {fingerprint[:12]!r}", param="source")


class RuntimeKind(AdapterKind):
    """A kind whose requests run on the FrozenRuntime (one batched entry point for all kinds)."""

    engine: ClassVar[EngineName] = "runtime"

    def builtin(self, name: str, backbone: Any) -> Any:
        raise InvalidRequest(f"{self.name} has no built-in model {name!r}; name an adapter in `model`",
                             param="model")

    def load(self, directory: Path, backbone: Any, ref: Any) -> Any:
        raise NotImplementedError  # abstract

    def prepare(self, backbone: Any, loaded: Any, request: Any) -> Any:
        return request

    def run(self, backbone: Any, batch: list[tuple[Any, Any]]) -> list[Any]:
        raise NotImplementedError  # abstract

    def finish(self, out: Any) -> Any:
        return out


class LLMKind(AdapterKind):
    """A kind that rides on the LLMServer's vLLM engine; its hooks run in that replica."""

    engine: ClassVar[EngineName] = "llm"
    serves: ClassVar[tuple[str, ...]] = ("chat", "completions", "responses")

    async def load(self, directory: Path, backbone: Any, ref: Any) -> Any:
        raise NotImplementedError  # abstract

    async def unload(self, loaded: Any, backbone: Any, ref: Any) -> None:
        return None

    async def rewrite_request(self, loaded: Any, call: Any) -> Any:
        return call

    def rewrite_response(self, loaded: Any, call: Any,
                         frames: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return frames


class SoftTokenKind(LLMKind):
    """An llm kind that brings media into chat as soft tokens (images, audio): its `embed`
    returns the messages with every content part of an `accepts` type replaced by a
    `{"type": "prompt_embeds"}` part, which vLLM splices in at the part's place. It runs in a
    thread of the replica, so other requests keep streaming; a bad part is a 400 from there.
    The adapter is no LoRA: the request is renamed to the base (`loaded.served_name`)."""

    serves: ClassVar[tuple[str, ...]] = ("chat",)

    def embed(self, loaded: Any, messages: list[Any]) -> list[Any]:
        raise NotImplementedError  # abstract

    async def rewrite_request(self, loaded: Any, call: Any) -> Any:
        body = {**call.body, "model": loaded.served_name}
        if call.route == "chat" and isinstance(body.get("messages"), list):
            body["messages"] = await asyncio.to_thread(self.embed, loaded, body["messages"])
        return dataclasses.replace(call, body=body)


def group_by_adapter(batch: Sequence[tuple[Any, Any]]) -> list[list[int]]:
    """Indices of `batch` grouped by loaded adapter (by identity), in first-seen order."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, (loaded, _) in enumerate(batch):
        groups[id(loaded)].append(i)
    return list(groups.values())


def stacked_forward(batch: Sequence[tuple[Any, Any]], rows: Callable[[Any], Any],
                    forward: Callable[[Any, Any], Any]) -> list[Any]:
    """The FrozenRuntime's usual batching: per adapter, one `forward(loaded, x)` over the rows of
    all its items stacked (`rows(item)`: a tensor, one row per input); each item's own rows of
    the output, in batch order. torch is imported here, so the seam stays torch-free to import."""
    import torch

    out: list[Any] = [None] * len(batch)
    with torch.no_grad():
        for indices in group_by_adapter(batch):
            parts = [rows(batch[i][1]) for i in indices]
            result = forward(batch[indices[0]][0], torch.cat(parts))
            for i, piece in zip(indices, torch.split(result, [p.shape[0] for p in parts]), strict=True):
                out[i] = piece
    return out


_KINDS: dict[str, AdapterKind] = {}
_plugins_loaded = False


def register_kind(cls: type[AdapterKind]) -> type[AdapterKind]:
    if getattr(cls, "engine", None) not in ("llm", "runtime"):
        raise ValueError(f"{cls.__name__}: subclass RuntimeKind or LLMKind")
    if not getattr(cls, "serves", None):
        raise ValueError(f"{cls.__name__}: `serves` must name the endpoint families it answers")
    _KINDS[cls.name] = cls()
    return cls


def load_kinds() -> None:
    """Import every kind of the `floe.adapters` entry-point group (floe's own ones included)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    for ep in entry_points(group=ENTRY_POINTS):
        ep.load()
    _plugins_loaded = True


def get_kind(name: str) -> AdapterKind:
    if name not in _KINDS:
        load_kinds()
    try:
        return _KINDS[name]
    except KeyError:
        raise InvalidAdapter(f"unknown adapter kind {name!r}; known kinds: {known_kinds()}",
                             param="kind") from None


def known_kinds() -> list[str]:
    load_kinds()
    return sorted(_KINDS)


def detect_kind(directory: Path) -> str:
    """The kind named by the manifest, else `lora` for a plain PEFT LoRA directory, else the kind
    whose `detect` claims the directory's layout (e.g. a released checkpoint)."""
    manifest = AdapterKind.read_manifest(directory)
    if "kind" in manifest:
        return str(manifest["kind"])
    if (directory / "adapter_config.json").is_file():
        return "lora"
    claimed = [name for name in known_kinds() if _KINDS[name].detect(directory)]
    if len(claimed) == 1:
        return claimed[0]
    if claimed:
        raise InvalidAdapter(f"{directory.name}: its layout is claimed by the kinds {claimed}; add a {MANIFEST} "
                             "naming one", param="source")
    raise InvalidAdapter(f"{directory.name}: neither {MANIFEST}, a PEFT adapter_config.json nor a checkpoint "
                         "layout a kind reads found", param="source")


def inspect_adapter(directory: Path, limits: EngineLimits) -> AdapterInfo:
    return get_kind(detect_kind(directory)).manifest(directory, limits)
