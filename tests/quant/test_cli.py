"""``floe quantize`` / ``floe prune`` as mounted by the server CLI through ``register(app)``."""

from __future__ import annotations

import torch
import typer
from typer.testing import CliRunner

import floe.quant as fq
from floe.quant.cli import register
from floe.quant.model_io import decoder_linears
from floe.quant.sparse24 import is_2to4


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_cli_quantize(tiny_model, tmp_path):
    out = tmp_path / "q"
    res = CliRunner().invoke(_app(), ["quantize", str(tiny_model), "--method", "rtn", "--bits", "4",
                                      "--group-size", "32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().endswith(str(out))
    m = fq.read_manifest(out)
    assert (m.method, m.bits, m.group_size) == ("rtn", 4, 32)


def test_cli_prune_with_calibration_file(tiny_model, calib_texts, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(calib_texts[:100]))
    out = tmp_path / "p"
    res = CliRunner().invoke(_app(), ["prune", str(tiny_model), "--method", "wanda",
                                      "--calibration", str(calib), "--out", str(out),
                                      "--set", "seq_len=64"])
    assert res.exit_code == 0, res.output
    assert fq.read_manifest(out).config["seq_len"] == 64
    model = fq.load_for_transformers(out)
    assert all(is_2to4(lin.weight.data) for _, lin in decoder_linears(model))


def test_cli_errors_exit_2_and_leave_nothing(tiny_model, tmp_path):
    runner = CliRunner()
    res = runner.invoke(_app(), ["quantize", str(tiny_model), "--method", "gptq", "--bits", "3",
                                 "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    res = runner.invoke(_app(), ["quantize", str(tmp_path / "missing"), "--method", "nf4",
                                 "--out", str(tmp_path / "y")])
    assert res.exit_code == 2
    res = runner.invoke(_app(), ["prune", str(tiny_model), "--method", "awq", "--out", str(tmp_path / "z")])
    assert res.exit_code == 2 and "maskllm" in res.output
    assert list(tmp_path.iterdir()) == []


def test_cli_prune_writes_a_mask_and_applies_it(tiny_model, tmp_path):
    runner = CliRunner()
    res = runner.invoke(_app(), ["prune", str(tiny_model), "--method", "magnitude", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p" / "floe_mask.npz").is_file()
    res = runner.invoke(_app(), ["prune", str(tiny_model), "--mask", str(tmp_path / "p" / "floe_mask.npz"),
                                 "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    m = fq.read_manifest(tmp_path / "a")
    assert m.method == "mask" and m.extra["mask_from"] == "magnitude"
    a, p = fq.load_for_transformers(tmp_path / "a"), fq.load_for_transformers(tmp_path / "p")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), p.state_dict().values()))
    res = runner.invoke(_app(), ["prune", str(tmp_path / "p"), "--mask", str(tmp_path / "p"),
                                 "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "another checkpoint" in res.output
    res = runner.invoke(_app(), ["prune", str(tiny_model), "--mask", str(tmp_path / "p"), "--method", "wanda",
                                 "--out", str(tmp_path / "c")])
    assert res.exit_code == 2
