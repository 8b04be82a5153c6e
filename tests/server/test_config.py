"""The config tree: YAML < environment < flags, validation with clear errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from floe.server.config import FloeConfig, load_config
from floe.server.engine.vllm_engine import vllm_cli_args


def test_precedence_yaml_env_flags(tmp_path, monkeypatch):
    path = tmp_path / "floe.yaml"
    path.write_text("http: {port: 9000, host: 0.0.0.0}\nengine: {max_model_len: 512}\n")
    monkeypatch.setenv("FLOE_ENGINE__MAX_MODEL_LEN", "1024")
    cfg = load_config(path, {"http": {"port": 9100}})
    assert cfg.http.port == 9100 and cfg.http.host == "0.0.0.0"
    assert cfg.engine.max_model_len == 1024


@pytest.mark.parametrize("raw", ['["k1","k2"]', "k1,k2", " k1 , k2 "])
def test_api_keys_from_env_and_secrets_hidden(monkeypatch, raw):
    monkeypatch.setenv("FLOE_AUTH__API_KEYS", raw)
    cfg = load_config()
    assert [k.get_secret_value() for k in cfg.auth.api_keys] == ["k1", "k2"]
    assert "k1" not in repr(cfg)
    assert cfg.dump_for_deploy()["auth"]["api_keys"] == ["k1", "k2"]


@pytest.mark.parametrize("bad", [
    {"http": {"port": 70000}},
    {"engine": {"max_num_seqs": 0}},
    {"nonsense": 1},
    {"deployment": {"engine_replicas": 3, "engine_num_cpus": 1}, "ray": {"num_cpus": 2}},
])
def test_invalid_config_is_rejected(bad):
    with pytest.raises((ValidationError, ValueError)):
        FloeConfig(**bad)


def test_bad_yaml_top_level(tmp_path):
    path = tmp_path / "floe.yaml"
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(path)


def test_vllm_cli_args_carry_every_engine_option(tmp_path):
    cfg = FloeConfig(engine={"dtype": "float32", "enforce_eager": False, "enable_prefix_caching": False,
                             "engine_args": {"block_size": 32, "enable_chunked_prefill": True}})
    args = vllm_cli_args(cfg.engine, tmp_path, "m")
    assert args[:4] == ["--model", str(tmp_path), "--served-model-name", "m"]
    assert "--no-enforce-eager" in args and "--no-enable-prefix-caching" in args
    assert args[args.index("--block-size") + 1] == "32" and "--enable-chunked-prefill" in args
    assert args[args.index("--kv-cache-memory-bytes") + 1] == str(256 * 2**20)
