"""Registry, manifest, config validation and the no-leftover guarantee on bad input."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

import floe.quant as fq
from floe.quant.manifest import hash_model_dir
from floe.quant.registry import MethodConfig, register_method


def _no_leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_unknown_method_lists_registered():
    with pytest.raises(fq.UnknownMethodError) as err:
        fq.get_method("awq")
    for name in ("nf4", "gptq", "qllm", "maskllm", "wanda", "magnitude"):
        assert name in str(err.value)
    with pytest.raises(fq.UnknownMethodError):
        fq.get_method("maskllm", kind="quantize")  # a prune method is no quantize method


def test_registry_kinds():
    assert set(fq.list_methods("quantize")) >= {"int8", "nf4", "fp4", "gptq", "rtn", "qllm"}
    assert set(fq.list_methods("prune")) >= {"magnitude", "wanda", "maskllm"}


def test_missing_dir(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(fq.ModelNotFoundError):
        fq.quantize(tmp_path / "nope", "nf4", out=out)
    assert not out.exists() and _no_leftovers(tmp_path) == []


def test_unsupported_architecture(tmp_path):
    src = tmp_path / "gpt2"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (src / "model.safetensors").write_bytes(b"")
    with pytest.raises(fq.UnsupportedArchitectureError):
        fq.prune(src, "magnitude", out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path) == []


@pytest.mark.parametrize("method,fields", [("gptq", {"bits": 3}), ("rtn", {"bits": 2}), ("qllm", {"bits": 5})])
def test_unsupported_bits(tiny_model, tmp_path, method, fields):
    cfg = fq.make_config(method, **fields)
    with pytest.raises(fq.UnsupportedBitsError):
        fq.quantize(tiny_model, cfg, out=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_group_size_not_dividing(tiny_model, tmp_path):
    with pytest.raises(fq.UnsupportedBitsError):
        fq.quantize(tiny_model, fq.make_config("rtn", group_size=48), out=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_unknown_config_field_is_an_error():
    with pytest.raises(fq.InvalidConfigError):
        fq.make_config("nf4", bits=3)  # nf4 has no bits field; never silently ignored


@pytest.mark.parametrize("calibration", [[], ["", "   \n"]])
def test_empty_calibration(tiny_model, tmp_path, calibration):
    with pytest.raises(fq.EmptyCalibrationError):
        fq.quantize(tiny_model, "gptq", calibration=calibration, out=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_empty_calibration_file(tiny_model, tmp_path):
    f = tmp_path / "calib.txt"
    f.write_text("\n\n  \n")
    with pytest.raises(fq.EmptyCalibrationError):
        fq.prune(tiny_model, "wanda", calibration=f, out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path) == []


class _BoomConfig(MethodConfig):
    method: str = "test-boom"


@register_method("test-boom", kind="quantize", config=_BoomConfig)
def _boom(model_dir, cfg, texts, work_dir):
    (work_dir / "model.safetensors").write_bytes(b"half")
    raise RuntimeError("failed halfway")


def test_failure_midway_leaves_nothing(tiny_model, tmp_path):
    with pytest.raises(RuntimeError):
        fq.quantize(tiny_model, _BoomConfig(), out=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_output_exists_needs_overwrite(tiny_model, tmp_path):
    out = fq.quantize(tiny_model, fq.make_config("rtn", bits=8, group_size=32), out=tmp_path / "o")
    with pytest.raises(fq.OutputExistsError):
        fq.quantize(tiny_model, fq.make_config("rtn", bits=8, group_size=32), out=out)
    fq.quantize(tiny_model, fq.make_config("rtn", bits=4, group_size=32), out=out, overwrite=True)
    assert fq.read_manifest(out).bits == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_manifest_fields(tiny_model, tmp_path):
    out = fq.quantize(tiny_model, fq.make_config("rtn", bits=4, group_size=32), out=tmp_path / "o")
    m = fq.read_manifest(out)
    assert (m.kind, m.method, m.bits, m.group_size, m.engine) == ("quantize", "rtn", 4, 32, "vllm")
    assert m.source_sha256 == hash_model_dir(tiny_model) and len(m.source_sha256) == 64
    assert m.load_kwargs["quantization"] == "compressed-tensors"
    assert m.config["group_size"] == 32
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["format"] == "pack-quantized"


def test_wrong_config_type(tiny_model, tmp_path):
    class Other(BaseModel):
        method: str = "nf4"

    with pytest.raises(fq.QuantError):
        fq.quantize(tiny_model, Other(), out=tmp_path / "o")
