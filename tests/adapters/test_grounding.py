"""The grounding kind (F-LMM) offline: the attention maps its head sees equal a plain transformers
eager forward over the LLaVA-style embedding sequence (fp32), batched equals unbatched, masks
decode with pycocotools, bad requests are 400s, the manifest checks, the chunker and the trainer."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from floe.adapters.grounding import GroundingConfig, demo
from floe.adapters.grounding import model as gm
from floe.adapters.grounding.masks import box, decode_rle, miou_ciou, rle
from floe.adapters.grounding.phrases import chunk
from floe.adapters.vision import model as vision
from floe.adapters.vision.demo import data_url
from floe.server.config import MediaConfig, RuntimeConfig
from floe.server.errors import InvalidRequest
from floe.server.kinds import MANIFEST, EngineLimits, InvalidAdapter, get_kind, inspect_adapter
from floe.server.runtime.engine import RuntimeBackbone
from floe.server.schemas.segmentations import GroundCall

torch.set_num_threads(1)
PROMPT = "What is in the picture?"


@pytest.fixture(scope="module")
def adapter_dir(tiny_dir, llm, tmp_path_factory):
    root = tmp_path_factory.mktemp("grounding")
    vision.write(root / "vision", llm.hidden_size, llm.fingerprint, seed=3)
    return gm.write(root / "grounding", tiny_dir, root / "vision", "tiny-vision", seed=1)


@pytest.fixture(scope="module")
def backbone(llm):
    return RuntimeBackbone(llm, RuntimeConfig())


@pytest.fixture(scope="module")
def loaded(adapter_dir, backbone):
    return get_kind("grounding").load(adapter_dir, backbone, None)


def picture(seed: int, size: int = 64):
    return demo.scene(random.Random(seed), size)[0]


def ground(backbone, loaded, **kwargs):
    kind = get_kind("grounding")
    return kind.prepare(backbone, loaded, GroundCall(media=MediaConfig(), **kwargs))


def reference_maps(tiny_dir, vision_dir, img, prompt: str, answer: str, span: tuple[int, int]) -> torch.Tensor:
    """F-LMM's maps from their definition: the LLaVA embedding sequence (vision.reference_inputs_embeds)
    + the answer's tokens, AutoModelForCausalLM eager, attention of the span's tokens to the image's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, attn_implementation="eager").eval()
    table = lm.get_input_embeddings().weight
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(img)}},
                                             {"type": "text", "text": prompt}]}]
    ref = vision.reference_inputs_embeds(tiny_dir, vision_dir, messages, embeddings=table)
    enc = AutoTokenizer.from_pretrained(tiny_dir)(answer, add_special_tokens=False, return_offsets_mapping=True)
    mine = [k for k, (a, b) in enumerate(enc["offset_mapping"]) if a < span[1] and b > span[0]]
    embeds = torch.cat([ref.inputs_embeds[0], table[enc["input_ids"]]])[None]
    with torch.no_grad():
        out = lm(inputs_embeds=embeds, output_attentions=True)
    (start, n), q = ref.spans[0], [len(ref.input_ids) + k for k in mine]
    side = int(n ** 0.5)
    return torch.cat([a[0][:, q][:, :, start:start + n].mean(1) for a in out.attentions]).reshape(-1, side, side)


def test_the_maps_the_head_sees_equal_a_plain_transformers_eager_forward(tiny_dir, adapter_dir, backbone, loaded):
    img_a, img_b = picture(1), picture(2, size=48)
    answer = "There is a red circle next to the blue square."
    items = [ground(backbone, loaded, image=data_url(img_a), phrases=["the red circle", "a blue thing on the left"]),
             ground(backbone, loaded, image=data_url(img_b), phrases=["x"], prompt="Describe it."),
             ground(backbone, loaded, image=data_url(img_b), phrases=[], prompt=PROMPT, answer=answer)]
    assert items[2].phrases == ["a red circle", "the blue square"]  # the chunker's, in prompt mode
    maps = gm.phrase_maps(backbone.llm, [(loaded, item) for item in items])  # one padded forward
    assert [len(m) for m in maps] == [2, 1, 2] and maps[0][0].shape == (8, 4, 4)
    vision_dir = adapter_dir / "vision"
    want = [reference_maps(tiny_dir, vision_dir, img_a, PROMPT, "the red circle", (0, 14)),
            reference_maps(tiny_dir, vision_dir, img_b, "Describe it.", "x", (0, 1)),
            reference_maps(tiny_dir, vision_dir, img_b, PROMPT, answer, (answer.index("the blue"), len(answer) - 1))]
    for got, ref in zip([maps[0][0], maps[1][0], maps[2][1]], want):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(maps[0][0], maps[0][1])  # another phrase, other attention


def test_batched_equals_unbatched_across_adapters(tiny_dir, adapter_dir, backbone, loaded, tmp_path):
    other_dir = gm.write(tmp_path / "other", tiny_dir, adapter_dir / "vision", "tiny-vision", seed=2)
    other = get_kind("grounding").load(other_dir, backbone, None)
    kind = get_kind("grounding")
    jobs = [(loaded, ground(backbone, loaded, image=data_url(picture(3)), phrases=["the red circle", "green"])),
            (other, ground(backbone, other, image=data_url(picture(4, 40)), phrases=["the blue triangle"])),
            (loaded, ground(backbone, loaded, image=data_url(picture(5)), phrases=["a yellow square"]))]
    together = [kind.finish(o) for o in kind.run(backbone, jobs)]
    alone = [kind.finish(kind.run(backbone, [job])[0]) for job in jobs]
    for a, b in zip(together, alone):
        assert (a.width, a.height, [s["phrase"] for s in a.segments]) == (b.width, b.height,
                                                                          [s["phrase"] for s in b.segments])
        for sa, sb in zip(a.segments, b.segments):
            assert sa["mask"] == sb["mask"] and sa["box"] == sb["box"]
            assert sa["score"] == pytest.approx(sb["score"], abs=1e-5)
    raw = kind.run(backbone, jobs[:1])[0]
    assert raw.masks[0].any() or raw.scores[0] == 0.0


def test_masks_are_coco_rle_at_the_picture_size(backbone, loaded):
    kind = get_kind("grounding")
    item = ground(backbone, loaded, image=data_url(picture(6, size=50)), phrases=["the red circle"])
    out = kind.run(backbone, [(loaded, item)])[0]
    result = kind.finish(out)
    mask = decode_rle(result.segments[0]["mask"])
    assert mask.shape == (50, 50) and (result.width, result.height) == (50, 50)
    assert np.array_equal(mask, out.masks[0]) and result.segments[0]["box"] == box(out.masks[0])
    png = kind.finish(gm.Grounded(**{**out.__dict__, "mask_format": "png"})).segments[0]["mask"]
    import base64
    import io

    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(png["png"])))).astype(np.uint8), mask)


def test_rle_box_and_iou_helpers():
    mask = np.zeros((6, 9), np.uint8)
    mask[1:4, 2:7] = 1
    assert np.array_equal(decode_rle(rle(mask)), mask) and rle(mask)["size"] == [6, 9]
    assert box(mask) == [2.0, 1.0, 7.0, 4.0] and box(np.zeros((3, 3))) == [0.0, 0.0, 0.0, 0.0]
    other = np.zeros_like(mask)
    other[1:4, 2:4] = 1
    miou, ciou = miou_ciou([(other, mask), (mask, mask)])
    assert miou == pytest.approx((6 / 15 + 1) / 2) and ciou == pytest.approx(21 / 30)


@pytest.mark.parametrize(("kwargs", "code"), [
    (dict(phrases=["p"] * 17), "too_many_phrases"),
    (dict(phrases=["ok", " "]), None),
    (dict(phrases=["p" * 201]), None),
    (dict(phrases=["p"], refine=True), "no_refiner"),
    (dict(phrases=["p"], image="data:image/png;base64,bm90IGFuIGltYWdl"), "invalid_image"),
    (dict(phrases=["p"], image="data:image/png;base64,***"), "invalid_media"),
    (dict(phrases=["p"], image="https://example.com/x.png"), "media_url_not_allowed"),
])
def test_bad_requests_are_400s_before_the_batch(backbone, loaded, kwargs, code):
    call = {"image": data_url(picture(7)), **kwargs}
    with pytest.raises(InvalidRequest) as err:
        ground(backbone, loaded, **call)
    assert err.value.status == 400 and (code is None or err.value.code == code)


def test_an_oversize_picture_is_a_400(backbone, loaded):
    call = GroundCall(image=data_url(picture(8, size=64)), phrases=["p"], media=MediaConfig(max_pixels=1000))
    with pytest.raises(InvalidRequest) as err:
        get_kind("grounding").prepare(backbone, loaded, call)
    assert err.value.code == "image_too_large"
    call = GroundCall(image=data_url(picture(8, size=64)), phrases=["p"], media=MediaConfig(max_bytes=100))
    with pytest.raises(InvalidRequest) as err:
        get_kind("grounding").prepare(backbone, loaded, call)
    assert err.value.code == "media_too_large"


def test_the_manifest_checks_vision_head_and_base(adapter_dir, tmp_path, llm):
    import shutil

    info = inspect_adapter(adapter_dir, EngineLimits())
    assert (info.kind, info.engine, info.serves) == ("grounding", "runtime", ("segmentations",))
    assert info.details["grid"] == [4, 4] and info.details["attention_channels"] == 8
    assert info.details["vision"]["name"] == "tiny-vision" and len(info.details["vision"]["version"]) == 64
    broken = tmp_path / "broken"
    shutil.copytree(adapter_dir, broken)
    manifest = json.loads((broken / MANIFEST).read_text())
    (broken / MANIFEST).write_text(json.dumps({**manifest, "config": {**manifest["config"], "attention_channels": 6}}))
    with pytest.raises(InvalidAdapter, match="attention maps"):
        inspect_adapter(broken, EngineLimits())
    (broken / MANIFEST).write_text(json.dumps({**manifest, "config": {**manifest["config"], "grid": [2, 8]}}))
    with pytest.raises(InvalidAdapter, match="grid"):
        inspect_adapter(broken, EngineLimits())
    (broken / MANIFEST).write_text(json.dumps({**manifest, "base_model": "0" * 64}))
    with pytest.raises(InvalidAdapter, match="another base"):
        inspect_adapter(broken, EngineLimits())
    with pytest.raises(InvalidAdapter, match="trained for base"):
        gm.load_for_backbone(broken, llm)
    shutil.rmtree(broken / "vision")
    (broken / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InvalidAdapter, match="vision"):
        inspect_adapter(broken, EngineLimits())
    with pytest.raises(ValueError):
        GroundingConfig(attention_channels=8, grid=(4, 4), threshold=1.5)


def test_the_chunker_finds_noun_phrases():
    assert chunk("There is a red circle next to the blue square.") == ["a red circle", "the blue square"]
    assert chunk("two green triangles and a cat, on the left of the yellow square") == [
        "two green triangles", "a cat", "the yellow square"]
    assert chunk("It is there.") == [] and chunk("") == []
    assert chunk("a red circle a blue square") == ["a red circle", "a blue square"]


def test_train_grounding_cli_on_a_tiny_refcoco_set(tiny_dir, adapter_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from floe.adapters.grounding.cli import train_grounding
    from floe.adapters.grounding.data import read
    from floe.adapters.grounding.train import THRESHOLDS

    data = demo.write_set(tmp_path / "set", 16, 4, seed=5)
    refs = read(data)
    assert {r.split for r in refs} == {"train", "val"} and all(r.mask.shape == (64, 64) for r in refs)
    app = typer.Typer()
    app.command()(train_grounding)
    out = tmp_path / "trained"
    res = CliRunner().invoke(app, ["--data", str(data), "--out", str(out), "--model", str(tiny_dir),
                                   "--vision", str(adapter_dir / "vision"), "--epochs", "2", "--batch-size", "8",
                                   "--projector", "freeze"])
    assert res.exit_code == 0, res.output
    info = inspect_adapter(out, EngineLimits())
    assert info.details["trained"] == ["mask_head"] and info.details["vision"]["name"] == "vision"
    training = json.loads((out / MANIFEST).read_text())["training"]
    assert len(training["val_miou_per_epoch"]) == 2 and training["val_pairs"] == sum(len(r.sentences) for r in refs
                                                                                       if r.split == "val")
    assert 0.0 <= training["best_val_miou"] <= 1.0 and 0.0 < training["val_union_miou"] <= 1.0
    assert training["threshold"] in THRESHOLDS and info.details["threshold"] == training["threshold"]
    assert training["val_miou"] >= training["best_val_miou"]  # 0.5 is among the thresholds tried
    # the LMM stayed frozen: the vision adapter is copied byte for byte
    assert (out / "vision" / "projector.safetensors").read_bytes() == (
        adapter_dir / "vision" / "projector.safetensors").read_bytes()
    # on a built-in base (no grounding in its attention) the default also tunes the projector copy
    tuned = tmp_path / "tuned"
    res = CliRunner().invoke(app, ["--data", str(data), "--out", str(tuned), "--model", str(tiny_dir),
                                   "--vision", str(adapter_dir / "vision"), "--epochs", "1", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    assert inspect_adapter(tuned, EngineLimits()).details["trained"] == ["mask_head", "projector"]
    assert (tuned / "vision" / "projector.safetensors").read_bytes() != (
        adapter_dir / "vision" / "projector.safetensors").read_bytes()
    res = CliRunner().invoke(app, ["--data", str(data), "--out", str(tmp_path / "y"), "--model", str(tiny_dir),
                                   "--vision", str(adapter_dir / "vision"), "--projector", "sometimes"])
    assert res.exit_code == 2 and "--projector" in res.output
    (data / "annotations.json").write_text("{}")
    res = CliRunner().invoke(app, ["--data", str(data), "--out", str(tmp_path / "x"), "--model", str(tiny_dir),
                                   "--vision", str(adapter_dir / "vision")])
    assert res.exit_code == 2 and "refs" in res.output


def test_polygon_and_uncompressed_rle_annotations_decode():
    from floe.adapters.grounding.data import ann_mask

    poly = ann_mask([[1, 1, 5, 1, 5, 4, 1, 4]], 6, 8)
    assert poly.shape == (6, 8) and poly[2, 3] == 1 and poly[0, 0] == 0
    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 1:3] = 1
    counts, flat, current, run = [], mask.flatten(order="F"), 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    assert np.array_equal(ann_mask({"size": [6, 8], "counts": counts}, 6, 8), mask)
    assert np.array_equal(ann_mask(rle(mask), 6, 8), mask)


def test_the_sdk_decodes_coco_rle_like_pycocotools():
    from floe.client.segmentations import Segment
    from floe.client.segmentations import decode_rle as sdk_decode

    rng = np.random.default_rng(0)
    for h, w in ((1, 1), (7, 5), (64, 64), (33, 80)):
        mask = (rng.random((h, w)) > rng.random()).astype(np.uint8)
        mask[: h // 2, : w // 3] = 1  # long runs: multi-group and negative delta counts
        encoded = rle(mask)
        assert np.array_equal(sdk_decode(encoded), mask)
        assert np.array_equal(Segment(phrase="p", score=1.0, box=box(mask), mask=encoded).to_numpy(), mask)
    with pytest.raises(ValueError, match="pixels"):
        sdk_decode({"size": [3, 3], "counts": rle(np.ones((2, 2), np.uint8))["counts"]})
