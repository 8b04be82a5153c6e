"""The image_encoder adapter kind (FLAME image side): ViT CLS -> MLP projector -> L2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from floe.adapters.image_encoder import model as image_kind
from floe.server.errors import InvalidRequest
from floe.server.kinds import EngineLimits, InvalidAdapter, inspect_adapter
from tests.runtime.images import data_url, manual_embedding, png


@pytest.fixture(scope="module")
def image_adapter(llm, tmp_path_factory):
    return image_kind.write(tmp_path_factory.mktemp("img") / "img-enc", llm.hidden_size, llm.fingerprint,
                            seed=3)


def test_embedding_equals_manual_vit_projector_l2(image_adapter, llm):
    encoder = image_kind.load(image_adapter, llm.hidden_size)
    images = [png(1), png(2, (17, 50), "RGBA")]
    got = encoder.embed(images)
    assert got.shape == (2, llm.hidden_size)
    for row, data in zip(got, images):
        torch.testing.assert_close(row, manual_embedding(image_adapter, data), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], got[1])


def test_write_is_seeded_and_the_manifest_mean_std_are_used(llm, tmp_path):
    a = image_kind.load(image_kind.write(tmp_path / "a", llm.hidden_size, llm.fingerprint, seed=5))
    b = image_kind.load(image_kind.write(tmp_path / "b", llm.hidden_size, llm.fingerprint, seed=5))
    torch.testing.assert_close(a.embed([png(4)]), b.embed([png(4)]))
    cfg = image_kind.ImageEncoderConfig(mean=(0.4, 0.45, 0.5), std=(0.2, 0.25, 0.3))
    c_dir = image_kind.write(tmp_path / "c", llm.hidden_size, llm.fingerprint, seed=5, cfg=cfg)
    c = image_kind.load(c_dir)
    assert c.cfg == cfg
    torch.testing.assert_close(c.embed([png(4)])[0], manual_embedding(c_dir, png(4), cfg.mean, cfg.std),
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a.embed([png(4)]), c.embed([png(4)]))


def test_inspect_and_load_checks(image_adapter, llm, tmp_path):
    info = inspect_adapter(image_adapter, EngineLimits())
    assert (info.kind, info.engine, info.base_model) == ("image_encoder", "runtime", llm.fingerprint)
    assert info.details["image_size"] == 32
    with pytest.raises(InvalidAdapter, match="width"):
        image_kind.load(image_adapter, llm.hidden_size + 1)
    bare = image_kind.write(tmp_path / "nobase", llm.hidden_size, None)
    with pytest.raises(InvalidAdapter, match="base_model"):
        inspect_adapter(bare, EngineLimits())
    (image_adapter.parent / "broken").mkdir()
    (image_adapter.parent / "broken" / "floe_adapter.json").write_text('{"kind": "image_encoder", "base_model": "x"}')
    with pytest.raises(InvalidAdapter, match="vision"):
        inspect_adapter(image_adapter.parent / "broken", EngineLimits())


def test_runtime_engine_embeds_images_and_refuses_bad_inputs(image_adapter, llm):
    from floe.server.config import RuntimeConfig
    from floe.server.registry import AdapterRef
    from floe.server.runtime.engine import RuntimeEngine
    from floe.server.schemas.embeddings import EmbedCall

    engine = RuntimeEngine(llm, RuntimeConfig(max_image_bytes=2000))
    ref = AdapterRef(name="img-enc", version="0" * 64, kind="image_encoder", engine="runtime",
                     path=str(image_adapter))
    adapter = engine.load_adapter(ref, image_adapter)
    small = png(7, (12, 12))
    assert len(small) < 2000
    call = EmbedCall(inputs=[data_url(small)])
    (result,) = engine.run_batch([(adapter, engine.prepare(adapter, call))])
    torch.testing.assert_close(torch.tensor(result.vectors[0]), manual_embedding(image_adapter, small),
                               atol=1e-5, rtol=1e-5)
    assert result.prompt_tokens == 17 and result.normalized
    bad = ["a photo of a cat", "https://example.com/cat.png", data_url(b"not an image"),
           data_url(png(8, (64, 64))), "data:image/png,rawbytes", [1, 2, 3]]
    for item in bad:
        with pytest.raises(InvalidRequest) as err:
            engine.prepare(adapter, EmbedCall(inputs=[item]))
        assert err.value.param == "input"
    with pytest.raises(InvalidRequest, match="image"):
        engine.prepare(engine.builtin("encoder"), EmbedCall(inputs=["hello", data_url(small)]))


def test_a_batch_mixing_image_and_text_requests_equals_one_at_a_time(image_adapter, llm):
    from floe.server.config import RuntimeConfig
    from floe.server.registry import AdapterRef
    from floe.server.runtime.engine import RuntimeEngine
    from floe.server.schemas.embeddings import EmbedCall

    engine = RuntimeEngine(llm, RuntimeConfig())
    ref = AdapterRef(name="img-enc", version="1" * 64, kind="image_encoder", engine="runtime",
                     path=str(image_adapter))
    adapter = engine.load_adapter(ref, image_adapter)
    base = engine.builtin("encoder")
    calls = [(adapter, EmbedCall(inputs=[data_url(png(30)), data_url(png(31))])),
             (base, EmbedCall(inputs=["hello world"])),
             (adapter, EmbedCall(inputs=[data_url(png(32, (9, 70)))]))]
    prepared = [(resident, engine.prepare(resident, c)) for resident, c in calls]
    together = engine.run_batch(prepared)
    for item, result in zip(prepared, together):
        (alone,) = engine.run_batch([item])
        np.testing.assert_allclose(result.vectors, alone.vectors, atol=1e-5)
    assert [len(r.vectors) for r in together] == [2, 1, 1]
    assert len(together[0].vectors[0]) == llm.hidden_size == len(together[1].vectors[0])
