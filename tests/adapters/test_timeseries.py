"""Time-LLM adapter: the kind, the offline forecast, batching, bad inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from floe.adapters.timeseries.model import load
from floe.server.config import RuntimeConfig
from floe.server.errors import InvalidRequest
from floe.server.kinds import EngineLimits, InvalidAdapter, inspect_adapter
from floe.server.registry import AdapterRef
from floe.server.runtime.engine import RuntimeEngine
from floe.server.schemas.forecasts import ForecastCall
from tests.runtime.helpers import TINY_TS, seasonal


@pytest.fixture(scope="module")
def engine(llm):
    return RuntimeEngine(llm, RuntimeConfig(max_series_length=500))


@pytest.fixture(scope="module")
def loaded(engine, ts_adapter):
    ref = AdapterRef(name="tiny-ts", version="0" * 64, kind="timeseries", engine="runtime",
                     path=str(ts_adapter))
    return ref, engine.load_adapter(ref, ts_adapter)


def test_kind_inspects_the_adapter(ts_adapter, llm):
    info = inspect_adapter(ts_adapter, EngineLimits())
    assert (info.kind, info.engine, info.base_model) == ("timeseries", "runtime", llm.fingerprint)
    assert info.details["horizon"] == TINY_TS.horizon


def test_adapter_for_another_base_is_refused(ts_adapter, llm, tmp_path):
    other = shutil.copytree(ts_adapter, tmp_path / "other")
    manifest = json.loads((other / "floe_adapter.json").read_text())
    manifest["base_model"] = "f" * 64
    (other / "floe_adapter.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidAdapter):
        load(other, llm)


@torch.no_grad()
def test_engine_forecast_equals_the_adapter_offline(engine, loaded, ts_adapter, llm):
    ref, adapter = loaded
    history = seasonal(40)
    call = ForecastCall(series=[history], horizon=4)
    (result,) = engine.run_batch([(adapter, engine.prepare(adapter, call))])
    got = result.forecasts
    net = load(ts_adapter, llm)  # a fresh copy, as a user would run it offline
    want = net(llm, torch.tensor([history[-TINY_TS.seq_len:]], dtype=torch.float32))[:, :4]
    torch.testing.assert_close(torch.tensor(got), want, atol=1e-5, rtol=1e-5)
    assert all(abs(v) < 1e3 for v in got[0])


@torch.no_grad()
def test_batched_equals_unbatched(engine, loaded):
    ref, adapter = loaded
    calls = [ForecastCall(series=[seasonal(30 + 3 * i, phase=i), seasonal(24, level=5.0 * i)],
                          horizon=TINY_TS.horizon - (i % 3)) for i in range(5)]
    prepared = [(adapter, engine.prepare(adapter, c)) for c in calls]
    batched = engine.run_batch(prepared)
    for call, item, got in zip(calls, prepared, batched):
        (alone,) = engine.run_batch([item])
        torch.testing.assert_close(torch.tensor(got.forecasts), torch.tensor(alone.forecasts), atol=1e-4,
                                   rtol=1e-5)
        assert len(got.forecasts) == 2 and len(got.forecasts[0]) == call.horizon


@pytest.mark.parametrize("series, horizon, code", [
    ([seasonal(10)], None, "series_too_short"),
    ([seasonal(501)], None, "series_too_long"),
    ([[float("nan")] + seasonal(30)], None, "non_finite_values"),
    ([seasonal(30)[:-1] + [float("inf")]], None, "non_finite_values"),
    ([seasonal(30)], 0, "bad_horizon"),
    ([seasonal(30)], TINY_TS.horizon + 1, "bad_horizon"),
])
def test_bad_inputs_are_400(engine, loaded, series, horizon, code):
    ref, adapter = loaded
    with pytest.raises(InvalidRequest) as info:
        engine.prepare(adapter, ForecastCall(series=series, horizon=horizon))
    assert info.value.status == 400 and info.value.code == code
