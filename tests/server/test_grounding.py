"""POST /v1/segmentations on the real server (Ray Serve + vLLM + FrozenRuntime): served masks equal
the offline adapter's, the `prompt` mode's answer equals the transformers greedy reference of its
vision adapter and its phrases are that answer's noun phrases, concurrent (batched) requests equal
sequential ones, masks decode with pycocotools, and bad input is a 400 with OpenAI's error body."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from floe.adapters.grounding import demo
from floe.adapters.grounding import model as gm
from floe.adapters.grounding.masks import decode_rle
from floe.adapters.grounding.phrases import chunk
from floe.adapters.vision import model as vision
from floe.adapters.vision.demo import data_url
from floe.server.config import MediaConfig, RuntimeConfig
from floe.server.kinds import get_kind
from floe.server.runtime.engine import RuntimeBackbone
from floe.server.runtime.model import base_fingerprint
from floe.server.schemas.segmentations import GroundCall
from tests.server.live import API_KEY, make_adapter

pytestmark = pytest.mark.slow


def scene(seed: int, size: int = 64) -> str:
    return data_url(demo.scene(random.Random(seed), size)[0])


@pytest.fixture(scope="module")
def grounding(live_server, admin):
    """A seeded vision adapter, two grounding adapters on it (one naming a vision version the server
    does not serve) and a LoRA, registered once; the offline kind on the same files."""
    root, base = live_server.adapter_root, live_server.model_dir
    width, fingerprint = vision.llm_width(base), base_fingerprint(base)
    vision.write(root / "g-vision", llm_hidden=width, base_fingerprint=fingerprint, seed=9)
    vision.write(root / "g-vision-b", llm_hidden=width, base_fingerprint=fingerprint, seed=10)
    gm.write(root / "g-ground", base, root / "g-vision", "g-vision", seed=4)
    gm.write(root / "g-stale", base, root / "g-vision", "g-vision-b", seed=4)
    for name in ("g-vision", "g-vision-b", "g-ground", "g-stale"):
        reply = admin.post("/v1/adapters", json={"name": name, "source": str(root / name)})
        assert reply.status_code in (200, 201), reply.text
    make_adapter(root, "g-lora", base, seed=71)
    assert admin.post("/v1/adapters", json={"name": "g-lora", "source": str(root / "g-lora")}).status_code == 201
    from floe.server.runtime.model import FrozenModel

    backbone = RuntimeBackbone(FrozenModel(base), RuntimeConfig())
    kind = get_kind("grounding")
    return kind, backbone, kind.load(root / "g-ground", backbone, None)


@pytest.fixture(scope="module")
def client(live_server):
    with httpx.Client(base_url=live_server.url, timeout=300, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        yield c


def offline(grounding, **call):
    kind, backbone, loaded = grounding
    item = kind.prepare(backbone, loaded, GroundCall(media=MediaConfig(), **call))
    return kind.finish(kind.run(backbone, [(loaded, item)])[0])


def segment(client, **body):
    reply = client.post("/v1/segmentations", json={"model": "g-ground", **body})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_served_masks_equal_the_offline_adapter(client, grounding):
    image = scene(1)
    served = segment(client, image=image, phrases=["the red circle", "a blue square"])
    want = offline(grounding, image=image, phrases=["the red circle", "a blue square"])
    assert served["answer"] is None and (served["width"], served["height"]) == (64, 64)
    assert [s["phrase"] for s in served["segments"]] == ["the red circle", "a blue square"]
    for got, ref in zip(served["segments"], want.segments):
        assert got["mask"] == ref["mask"] and got["box"] == ref["box"]
        assert got["score"] == pytest.approx(ref["score"], abs=1e-5)
        assert decode_rle(got["mask"]).shape == (64, 64)
    png = segment(client, image=image, phrases=["the red circle"], mask_format="png")["segments"][0]["mask"]
    assert set(png) == {"size", "png"} and png["size"] == [64, 64]


def test_prompt_mode_answers_with_the_vision_adapter_then_grounds_its_noun_phrases(live_server, client, grounding):
    image, prompt = scene(2, 48), "What is in the picture?"
    served = segment(client, image=image, prompt=prompt, max_tokens=12)
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                             {"type": "text", "text": prompt}]}]
    _, answer = vision.reference_generate(live_server.model_dir, live_server.adapter_root / "g-vision", messages,
                                          max_tokens=12)
    assert served["answer"] == answer
    assert [s["phrase"] for s in served["segments"]] == chunk(answer)[:16]
    want = offline(grounding, image=image, phrases=[], prompt=prompt, answer=answer)
    assert [s["mask"] for s in served["segments"]] == [s["mask"] for s in want.segments]


def test_concurrent_requests_equal_sequential_ones(client):
    jobs = [dict(image=scene(10 + k, 40 + 8 * (k % 3)),
                 phrases=[f"the {c} circle" for c in ("red", "blue")[:1 + k % 2]]) for k in range(6)]
    alone = [segment(client, **job) for job in jobs]
    barrier = threading.Barrier(len(jobs))

    def together(job):
        barrier.wait()
        return segment(client, **job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        batched = list(pool.map(together, jobs))
    for a, b in zip(alone, batched):
        assert [s["mask"] for s in a["segments"]] == [s["mask"] for s in b["segments"]]
        assert [s["score"] for s in a["segments"]] == pytest.approx([s["score"] for s in b["segments"]], abs=1e-5)


@pytest.mark.parametrize(("body", "code", "param"), [
    (dict(image="data:image/png;base64,bm90IGFuIGltYWdl", phrases=["x"]), "invalid_image", "image"),
    (dict(phrases=[]), None, "phrases"),
    (dict(phrases=["ok", ""]), None, "phrases"),
    (dict(phrases=["p"] * 17), "too_many_phrases", "phrases"),
    (dict(phrases=["p"] * 65), None, "phrases"),
    (dict(phrases=["p"], prompt="What?"), None, None),
    (dict(), None, None),
    (dict(phrases=["p"], refine=True), "no_refiner", "refine"),
    (dict(phrases=["p"], mask_format="bmp"), None, "mask_format"),
    (dict(phrases=["p"], model="g-lora"), None, "model"),
    (dict(phrases=["p"], model="g-vision"), None, "model"),
    (dict(phrases=["p"], model="tiny"), None, "model"),
    (dict(prompt="What is it?", model="g-stale"), "vision_adapter_mismatch", "model"),
])
def test_bad_input_is_a_400(client, grounding, body, code, param):
    reply = client.post("/v1/segmentations", json={"model": "g-ground", "image": scene(3), **body})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert code is None or error["code"] == code, error
    assert param is None or (error["param"] or "").startswith(param), error


def test_an_oversize_picture_is_a_400_and_an_unknown_model_a_404(client, grounding):
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (4200, 4200)).save(buf, format="PNG")  # 17.6 M pixels > media.max_pixels, a tiny file
    big = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    reply = client.post("/v1/segmentations", json={"model": "g-ground", "image": big, "phrases": ["x"]})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "image_too_large", reply.text
    reply = client.post("/v1/segmentations", json={"model": "nope", "image": scene(4), "phrases": ["x"]})
    assert reply.status_code == 404, reply.text
