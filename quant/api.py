"""The public verbs: ``quantize``, ``prune`` and ``load_for_transformers``."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, ValidationError

from floe.quant.calibration import load_texts
from floe.quant.errors import InvalidConfigError, OutputExistsError, QuantError, UnsupportedBitsError
from floe.quant.manifest import QuantManifest, hash_model_dir, read_manifest, write_manifest
from floe.quant.model_io import check_architecture
from floe.quant.registry import Kind, get_method


def quantize(model_dir, config: BaseModel | str, calibration=None, out=None, overwrite=False) -> Path:
    """Quantize the HF checkpoint at ``model_dir`` with ``config`` (a method config or its name).

    ``calibration``: path to a text file, a list of strings, or None (methods that need text
    then use the built-in corpus's calibration split). Returns the output directory.
    """
    return _run("quantize", model_dir, config, calibration, out, overwrite)


def prune(model_dir, config: BaseModel | str, calibration=None, out=None, overwrite=False) -> Path:
    """Prune to 2:4 sparsity; the output is a dense-format checkpoint with exact zeros."""
    return _run("prune", model_dir, config, calibration, out, overwrite)


def make_config(method: str, kind: Kind | None = None, **fields) -> BaseModel:
    """The method's config with ``fields`` set (None values left at their defaults)."""
    spec = get_method(method, kind)
    try:
        return spec.config_cls(method=method, **{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise InvalidConfigError(f"bad config for {method!r}: {exc}") from exc


def _check_bits(config: BaseModel) -> None:
    supported = getattr(type(config), "SUPPORTED_BITS", None)
    bits = getattr(config, "bits", None)
    if supported is not None and bits not in supported:
        raise UnsupportedBitsError(
            f"{config.method}: {bits}-bit is not supported; supported: {', '.join(map(str, supported))}")


def _run(kind: Kind, model_dir, config, calibration, out, overwrite) -> Path:
    model_dir = Path(model_dir)
    if isinstance(config, str):
        config = make_config(config, kind)
    spec = get_method(getattr(config, "method", ""), kind)
    if not isinstance(config, spec.config_cls):
        raise QuantError(f"method {spec.name!r} takes a {spec.config_cls.__name__}, got {type(config).__name__}")
    _check_bits(config)
    check_architecture(model_dir)
    texts = load_texts(calibration)
    if texts is None and spec.needs_calibration:
        from floe.quant.refdata import splits

        texts = splits().calib
    out = Path(out) if out is not None else model_dir.with_name(f"{model_dir.name}-{spec.name}")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    # NOTE: written into a temp dir beside the output and renamed, so a failure leaves nothing.
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        result = spec.run(model_dir, config, texts, tmp)
        manifest = QuantManifest(
            kind=kind, method=spec.name, bits=result.bits, group_size=result.group_size,
            source_model=str(model_dir.resolve()), source_sha256=hash_model_dir(model_dir),
            engine=result.engine, load_kwargs=result.load_kwargs,
            config=config.model_dump(mode="json"), extra=result.extra,
        )
        write_manifest(tmp, manifest)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{tmp.name[-8:]}")
            out.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_for_transformers(out_dir):
    """A ready (eval-mode) transformers model for any floe.quant output directory."""
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if manifest.extra.get("format") == "compressed-tensors":
        from floe.quant.ct_export import load_compressed_dense

        return load_compressed_dense(out_dir)
    kwargs = {k: v for k, v in manifest.load_kwargs.items() if k != "quantization_config"}
    model = AutoModelForCausalLM.from_pretrained(out_dir, **kwargs)
    return model.eval()
