"""The playground (`GET /playground`) in a real headless Chromium (Debian's `chromium`, driven by
Playwright, no browser download) against the real server of tests/clients/live.py (Ray Serve +
vLLM + the FrozenRuntime, API and admin keys set, the demo adapters preloaded).

What the page shows is checked against what the API answers to the same request through
clients nobody here wrote (the official `openai` package, httpx): the streamed chat text, image
and audio answers, tool calls, a forecast's plotted values. The page's own decoders run in the
browser against their references: COCO RLE against pycocotools, the 24 kHz resampler against
the band-limited definition. Every page load fetches from the server's origin only, and raises
no script error. Each tab's screenshot is written under `$FLOE_CACHE_DIR/screenshots/`.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.clients.live import ADMIN_KEY, API_KEY, seasonal

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 180_000  # a first request on a busy 2-core machine may compile for a while


# -- the browser -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shots(request) -> Path:
    import os

    out = Path(os.environ["FLOE_CACHE_DIR"]) / "screenshots" / time.strftime("playground-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"playground screenshots: {out}")
    return out


@pytest.fixture(scope="module")
def fake_mic(tmp_path_factory) -> Path:
    """The WAV Chromium plays as its microphone: a second of tones, a second of silence."""
    from floe.adapters.audio.decode import wav_bytes

    rate = 48000
    t = np.arange(rate) / rate
    voice = 0.4 * np.sin(2 * np.pi * 220 * t) * np.sin(np.pi * t) ** 2
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    path.write_bytes(wav_bytes(np.concatenate([voice, np.zeros(rate)]), rate))
    return path


@pytest.fixture(scope="module")
def browser(fake_mic):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "the browser tests drive Debian's Chromium: apt-get install -y chromium chromium-driver"
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={fake_mic}", "--autoplay-policy=no-user-gesture-required"])
        yield chromium
        chromium.close()


class Tab:
    """One page of the playground, with what it fetched and every script error it raised."""

    def __init__(self, page, live) -> None:
        self.page, self.live = page, live
        self.errors: list[str] = []
        self.urls: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", lambda msg: msg.type == "error" and not _http_status(msg.text)
                and self.errors.append(f"console: {msg.text}"))
        page.on("request", lambda req: self.urls.append(req.url))

    def open(self, tab: str, key: str | None = API_KEY) -> None:
        from playwright.sync_api import expect

        self.page.goto(f"{self.live.url}/playground#{tab}")
        expect(self.page.locator("body")).to_have_attribute("data-ready", "1")
        if key is not None:
            self.page.fill("#api-key", key)
            self.page.click("#key-form button")
            expect(self.page.locator(f"#chat-model option[value='{self.live.model}']")).to_have_count(1)

    def shot(self, shots: Path, name: str) -> Path:
        path = shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def _until(condition, timeout_s: float = WAIT_MS / 1000) -> None:
    """Poll a condition on the page (the page's policy allows no eval, so no wait_for_function)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the page did not get there in time"
        time.sleep(0.2)


def _http_status(text: str) -> bool:
    # Chromium logs each 4xx / 5xx answer to the console; the tests provoke some on purpose.
    return text.startswith("Failed to load resource: the server responded with a status of")


@pytest.fixture
def tab(browser, floe_live):
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.grant_permissions(["microphone"], origin=floe_live.url)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    t = Tab(page, floe_live)
    yield t
    context.close()
    outside = [u for u in t.urls if not u.startswith((floe_live.url + "/", "data:", "blob:"))]
    assert not outside, f"the page fetched from outside the server: {outside}"
    assert not t.errors, t.errors


@pytest.fixture(scope="module")
def openai_client(floe_live):
    from openai import OpenAI

    return OpenAI(base_url=floe_live.base_url, api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def admin(floe_live):
    with httpx.Client(base_url=floe_live.url, timeout=300, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        yield c


# -- the page itself ---------------------------------------------------------------------------

def test_page_is_served_from_the_package_with_a_strict_policy(floe_live):
    index = httpx.get(f"{floe_live.url}/playground", follow_redirects=True)
    assert index.status_code == 200 and str(index.url).endswith("/playground/")
    assert index.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in index.headers["content-security-policy"]
    files = (("app.js", "text/javascript"), ("style.css", "text/css"), ("capture-worklet.js", "text/javascript"))
    for name, kind in files:
        answer = httpx.get(f"{floe_live.url}/playground/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind), name
    for missing in ("nope.js", "..%2Fplayground.py", "%2E%2E%2F%2E%2E%2Fconfig.py"):
        answer = httpx.get(f"{floe_live.url}/playground/{missing}")
        assert answer.status_code == 404 and "error" in answer.json(), missing


def test_the_page_asks_for_the_key_and_groups_models_by_kind(tab, shots):
    from playwright.sync_api import expect

    page = tab.page
    tab.open("chat", key=None)
    banner = page.locator("#key-needed")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("API key")
    page.fill("#api-key", "wrong-key")
    page.click("#key-form button")
    expect(banner).to_contain_text("Incorrect")
    page.fill("#api-key", API_KEY)
    page.click("#key-form button")
    expect(banner).to_be_hidden()
    groups = page.eval_on_selector_all(
        "#chat-model optgroup", "gs => gs.map(g => [g.label, [...g.children].map(o => o.value)])")
    by_kind = dict(groups)
    assert by_kind["base"] == [tab.live.model]
    assert "demo-vision" in by_kind["vision"] and "demo-audio" in by_kind["audio"]
    # the chat picker lists only models that serve chat
    served = httpx.get(f"{tab.live.url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"]
    chat = sorted(m["id"] for m in served if "chat" in m["serves"])
    assert sorted(v for _, values in groups for v in values) == chat


def test_every_tab_renders_with_its_pickers(tab, shots):
    from playwright.sync_api import expect

    page = tab.page
    tab.open("chat")
    for name, picker in (("segment", "seg-model"), ("forecast", "fc-model"), ("realtime", "rt-model"),
                         ("adapters", None), ("chat", "chat-model")):
        page.click(f"#tabs button[data-tab='{name}']")
        expect(page.locator(f"#tab-{name}")).to_be_visible()
        expect(page.locator(f"#tabs button[data-tab='{name}']")).to_have_class("active")
        assert page.locator("main > section:visible").count() == 1
        if picker:  # a picker with nothing to pick says so, and is disabled
            options = page.locator(f"#{picker} option")
            assert options.count() >= 1
            if options.first.get_attribute("value") == "":
                assert "no model serves" in options.first.text_content() and page.locator(f"#{picker}").is_disabled()
        tab.shot(shots, f"tab-{name}")


# -- chat --------------------------------------------------------------------------------------

def _send(page, text: str, max_tokens: int) -> None:
    page.fill("#chat-max-tokens", str(max_tokens))
    page.fill("#chat-temperature", "0")
    page.fill("#chat-input", text)
    page.click("#chat-send")


def _answer(page):
    from playwright.sync_api import expect

    last = page.locator("#chat-log .msg.assistant").last
    expect(last).to_have_attribute("data-done", "1")
    assert page.locator("#chat-error").is_hidden(), page.locator("#chat-error").text_content()
    return last


def test_chat_streams_the_answer_into_the_page(tab, openai_client, shots):
    page = tab.page
    tab.open("chat")
    page.select_option("#chat-model", tab.live.model)
    _send(page, "Tell me a story about a lighthouse.", 24)
    last = _answer(page)
    frames = [c for c in openai_client.chat.completions.create(
        model=tab.live.model, messages=[{"role": "user", "content": "Tell me a story about a lighthouse."}],
        max_tokens=24, temperature=0, stream=True) if c.choices]
    reference = "".join(c.choices[0].delta.content or "" for c in frames)
    assert reference and last.locator(".text").text_content() == reference
    # the text arrived piece by piece, one DOM update per frame; the count is not compared with
    # the reference stream's, as the engine merges deltas a slow reader has not yet taken
    assert int(last.get_attribute("data-chunks")) > 2 and len(frames) > 2
    assert "finish_reason: length" in last.text_content()
    tab.shot(shots, "chat")


def _png(path: Path) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (48, 48), (240, 240, 240))
    ImageDraw.Draw(img).ellipse((8, 8, 40, 40), fill=(200, 30, 30))
    img.save(path)
    return path


def test_chat_sends_an_attached_image_and_audio(tab, openai_client, tmp_path):
    from playwright.sync_api import expect

    from floe.adapters.audio.decode import wav_bytes

    page = tab.page
    tab.open("chat")
    image = _png(tmp_path / "circle.png")
    t = np.arange(9600) / 16000
    clip = tmp_path / "tone.wav"
    clip.write_bytes(wav_bytes(0.3 * np.sin(2 * np.pi * 440 * t), 16000))
    data_url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    cases = [("demo-vision", image, "What is in the picture?",
              {"type": "image_url", "image_url": {"url": data_url}}),
             ("demo-audio", clip, "What was said?",
              {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip.read_bytes()).decode(),
                                                      "format": "wav"}})]
    for model, path, text, part in cases:
        page.click("#chat-clear")
        page.select_option("#chat-model", model)
        page.set_input_files("#chat-file", str(path))
        expect(page.locator("#chat-attachment")).to_contain_text(path.name)
        _send(page, text, 8)
        shown = _answer(page).locator(".text").text_content()
        reply = openai_client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": [part, {"type": "text", "text": text}]}],
            max_tokens=8, temperature=0)
        assert shown == reply.choices[0].message.content, model
    # a text-only model takes no attachment
    page.select_option("#chat-model", tab.live.model)
    assert page.locator("#chat-file").is_disabled()


WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["city", "days"],
    "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}]


def test_chat_tool_definitions_and_returned_tool_calls(tab, openai_client, shots):
    page = tab.page
    tab.open("chat")
    page.select_option("#chat-model", tab.live.model)
    page.click("#chat-tools-panel summary")
    page.fill("#chat-tools", "[not json")
    page.check("#chat-tools-on")
    _send(page, "Weather in Paris?", 120)
    assert "not JSON" in page.locator("#chat-tools-error").text_content()
    page.fill("#chat-tools", json.dumps(WEATHER))
    page.select_option("#chat-tool-choice", "required")
    page.check("#chat-one-call")
    _send(page, "Weather in Paris?", 120)
    call = _answer(page).locator(".tool-call")
    reply = openai_client.chat.completions.create(
        model=tab.live.model, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=WEATHER,
        tool_choice="required", parallel_tool_calls=False, max_tokens=120, temperature=0)
    expected = reply.choices[0].message.tool_calls
    assert expected and call.count() == len(expected) == 1
    assert call.get_attribute("data-name") == expected[0].function.name == "get_weather"
    assert json.loads(call.locator("pre").text_content()) == json.loads(expected[0].function.arguments)
    tab.shot(shots, "chat-tools")


# -- adapters and forecasts ----------------------------------------------------------------------

def _register(page, name: str, source: Path | str) -> None:
    page.fill("#ad-name", name)
    page.fill("#ad-source", str(source))
    page.click("#ad-add")


def test_adapters_tab_lists_registers_and_removes(tab, shots):
    from playwright.sync_api import expect

    page, live = tab.page, tab.live
    tab.open("adapters")
    # the API key may not manage adapters when an admin key is set: the tab says so
    expect(page.locator("#ad-error")).to_contain_text("admin key")
    page.fill("#ad-admin-key", ADMIN_KEY)
    page.click("#ad-key-form button[type=submit]")
    expect(page.locator("#ad-list tr[data-name='demo-vision']")).to_have_attribute("data-state", "ready")
    source = live.adapter("pg-bot", seed=21)
    _register(page, "pg-bot", source)
    row = page.locator("#ad-list tr[data-name='pg-bot']")
    expect(row).to_have_attribute("data-state", "ready")
    expect(row).to_contain_text("lora")
    expect(page.locator("#chat-model optgroup[label='lora'] option[value='pg-bot']")).to_have_count(1)
    tab.shot(shots, "adapters")
    _register(page, "pg-outside", "/etc")
    expect(page.locator("#ad-error")).to_contain_text("allowed")
    row.locator("button.remove").click()
    expect(row).to_have_count(0)
    expect(page.locator("#chat-model option[value='pg-bot']")).to_have_count(0)


def test_forecast_plot_draws_history_and_the_served_forecast(tab, admin, shots):
    from playwright.sync_api import expect

    page, live = tab.page, tab.live
    source = live.timeseries_adapter("my-forecaster")  # the directory the docs test registers too: trained once
    assert admin.post("/v1/adapters", json={"name": "pg-forecaster", "source": str(source)}).status_code in (200, 201)
    tab.open("forecast")
    a, b = seasonal(36), seasonal(36, phase=1.0, level=20.0)
    page.fill("#fc-csv", "demand,price\n" + "\n".join(f"{x!r},{y!r}" for x, y in zip(a, b)))
    page.select_option("#fc-model", "pg-forecaster")
    page.fill("#fc-horizon", "6")
    page.click("#fc-run")
    forecast = page.locator("#fc-plot path.forecast")
    expect(forecast).to_have_count(2)
    served = httpx.post(f"{live.url}/v1/forecasts", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300,
                        json={"model": "pg-forecaster", "series": [a, b], "horizon": 6}).json()
    for channel in served["forecasts"]:
        drawn = page.locator(f"#fc-plot path.forecast[data-channel='{channel['index']}']")
        assert json.loads(drawn.get_attribute("data-values")) == channel["values"]
        assert drawn.get_attribute("d").count("L") == 6  # from the last observed point, six steps
    history = page.locator("#fc-plot path.history[data-channel='0']")
    assert json.loads(history.get_attribute("data-values")) == a
    # the plot is drawn: pixels of the first channel's colour (#1f77b4) on the screenshot
    path = tab.shot(shots, "forecast")
    from PIL import Image

    box = page.locator("#fc-plot").bounding_box()
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    plot = img[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
    blue = (np.abs(plot - [31, 119, 180]).sum(axis=-1) < 30).sum()
    assert blue > 500, blue
    # a bad series is a clear error in the page, not a request
    page.fill("#fc-csv", "1\n2\nthree")
    page.click("#fc-run")
    expect(page.locator("#fc-error")).to_contain_text("row 3")
    admin.delete("/v1/adapters/pg-forecaster")


# -- segmentation and realtime (the grounding and speech demos of the default serve) ---------------

def test_segmentation_overlay_draws_each_mask_in_its_colour(tab, shots, tmp_path):
    import random

    from playwright.sync_api import expect
    from pycocotools import mask as coco

    from floe.adapters.grounding.demo import scene

    page, live = tab.page, tab.live
    img, objects = scene(random.Random(2024))
    path = tmp_path / "scene.png"
    img.save(path)
    phrases = [sentences[0] for _, sentences in objects[:2]]
    tab.open("segment")
    expect(page.locator("#seg-model option[value='demo-grounding']")).to_have_count(1)
    page.select_option("#seg-model", "demo-grounding")
    page.set_input_files("#seg-file", str(path))
    expect(page.locator("#seg-image")).not_to_have_attribute("width", "1")
    page.fill("#seg-text", ", ".join(phrases))
    page.click("#seg-run")
    expect(page.locator("#seg-overlay")).to_have_attribute("data-segments", re.compile(r"^\d+$"))
    served = httpx.post(f"{live.url}/v1/segmentations", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300,
                        json={"model": "demo-grounding", "phrases": phrases,
                              "image": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()}).json()
    overlay = page.evaluate("""() => {
        const c = document.getElementById('seg-overlay');
        return {w: c.width, h: c.height, scale: Number(c.dataset.scale),
                data: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)};
    }""")
    scale = overlay["scale"]
    pixels = np.asarray(overlay["data"], np.uint8).reshape(overlay["h"], overlay["w"], 4)
    legend = page.eval_on_selector_all("#seg-legend li", "ls => ls.map(l => l.dataset.colour.split(',').map(Number))")
    masks = [coco.decode({"size": s["mask"]["size"], "counts": s["mask"]["counts"].encode()})
             for s in served["segments"]]
    assert masks and page.locator("#seg-overlay").get_attribute("data-segments") == str(len(masks))
    assert masks[0].shape == (img.height, img.width) and len(legend) == len(masks)
    # what each segment's box outline and label may cover: its box edges and a band above it
    furniture = np.zeros(pixels.shape[:2], bool)
    for s in served["segments"]:
        x0, y0, x1, y1 = (int(round(v * scale)) for v in s["box"])
        furniture[max(0, y0 - 3):y0 + 3, max(0, x0 - 3):x1 + 3] = True
        furniture[max(0, y1 - 3):y1 + 3, max(0, x0 - 3):x1 + 3] = True
        furniture[max(0, y0 - 3):y1 + 3, max(0, x0 - 3):x0 + 3] = True
        furniture[max(0, y0 - 3):y1 + 3, max(0, x1 - 3):x1 + 3] = True
        top = max(0, y0 * 1 - 18)
        furniture[top:top + 20, max(0, x0 - 3):x0 + 220] = True
    centres = (np.arange(masks[0].shape[0]) * scale + scale // 2, np.arange(masks[0].shape[1]) * scale + scale // 2)
    shown = pixels[np.ix_(*centres)]          # one display pixel per image pixel: [h, w, 4]
    free = ~furniture[np.ix_(*centres)]
    covered = np.zeros(masks[0].shape, bool)
    checked = 0
    for i in reversed(range(len(masks))):     # later masks are drawn over earlier ones
        own = masks[i].astype(bool) & ~covered & free
        covered |= masks[i].astype(bool)
        match = (shown[own][:, :3] == legend[i]).all(axis=1) & (shown[own][:, 3] == 255)
        assert match.all() if own.sum() < 100 else match.mean() > 0.99, (served["segments"][i]["phrase"], match.mean())
        checked += int(own.sum())
    assert checked > 50, "the served masks are (nearly) empty: nothing to check"
    outside = ~covered & free
    assert (shown[outside][:, 3] == 0).mean() > 0.99
    tab.shot(shots, "segmentation")


def test_realtime_with_the_fake_microphone_receives_audio(tab, shots):
    from playwright.sync_api import expect

    page = tab.page
    sent: list[dict] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda frame: sent.append(json.loads(frame))))
    tab.open("realtime")
    expect(page.locator("#rt-model option[value='demo-speech']")).to_have_count(1)
    page.select_option("#rt-model", "demo-speech")
    page.select_option("#rt-turns", "manual")
    page.fill("#rt-max-tokens", "12")
    page.click("#rt-mic")
    counts = page.locator("#rt-counts")
    _until(lambda: int(counts.get_attribute("data-sent-bytes")) >= 2 * 24000 * 2)  # two seconds of speech
    page.click("#rt-commit")
    _until(lambda: int(counts.get_attribute("data-responses")) >= 1)
    assert int(counts.get_attribute("data-audio-bytes")) > 0 and int(counts.get_attribute("data-deltas")) > 0
    assert page.locator("#rt-error").is_hidden(), page.locator("#rt-error").text_content()
    expect(page.locator("#rt-transcript .msg.assistant")).to_have_count(1)
    tab.shot(shots, "realtime")
    page.click("#rt-hangup")
    # what the page sent is the fake microphone's 220 Hz tone as 24 kHz PCM16
    update = next(e for e in sent if e["type"] == "session.update")
    assert update["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    pcm = np.concatenate([np.frombuffer(base64.b64decode(e["audio"]), "<i2") for e in sent
                          if e["type"] == "input_audio_buffer.append"]).astype(float)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    peak = np.fft.rfftfreq(len(pcm), 1 / 24000)[spectrum.argmax()]
    assert abs(peak - 220) < 5, peak
    assert [e["type"] for e in sent].count("input_audio_buffer.commit") == 1


# -- the page's decoders in the browser, against their references --------------------------------

def test_rle_decoder_equals_pycocotools(tab):
    from pycocotools import mask as coco

    tab.open("segment", key=None)
    rng = np.random.default_rng(3)
    masks = [np.zeros((5, 7), np.uint8), np.ones((6, 4), np.uint8), rng.integers(0, 2, (37, 23), dtype=np.uint8)]
    big = np.zeros((300, 400), np.uint8)
    big[20:260, 30:390] = 1  # runs far past 2**5 and 2**10, increasing and decreasing
    big[100:120, 50:60] = 0
    masks.append(big)
    rles = []
    for m in masks:
        rle = coco.encode(np.asfortranarray(m))
        rles.append({"size": list(rle["size"]), "counts": rle["counts"].decode()})
    decoded = tab.page.evaluate("""async (rles) => {
        const { decodeRle } = await import('./rle.js');
        return rles.map((r) => Array.from(decodeRle(r)));
    }""", rles)
    for m, d in zip(masks, decoded):
        assert np.array_equal(np.asarray(d, np.uint8).reshape(m.shape), m)
    bad = tab.page.evaluate("""async () => {
        const { decodeRle } = await import('./rle.js');
        try { decodeRle({size: [2, 2], counts: '9'}); return 'decoded'; } catch (e) { return e.message; }
    }""")
    assert "pixels" in bad or "fit" in bad


def test_resampler_to_24k_is_band_limited(tab):
    tab.open("realtime", key=None)
    out = tab.page.evaluate("""async () => {
        const { Resampler } = await import('./audio.js');
        const tone = (f) => {
            const r = new Resampler(48000, 24000);
            const x = Float32Array.from({length: 48000}, (_, n) => Math.sin(2 * Math.PI * f * n / 48000));
            const parts = [];
            for (let at = 0, k = 0; at < x.length; k++) {  // uneven chunks, as a worklet posts them
                const size = [128, 960, 37, 4096][k % 4];
                parts.push(...r.push(x.subarray(at, at + size)));
                at += size;
            }
            return parts;
        };
        return { low: tone(440), high: tone(15000) };
    }""")
    low, high = np.asarray(out["low"]), np.asarray(out["high"])
    assert 23900 < len(low) <= 24000
    n = np.arange(len(low))
    middle = slice(200, len(low) - 200)
    assert np.abs(low[middle] - np.sin(2 * np.pi * 440 * n[middle] / 24000)).max() < 0.01
    # 15 kHz is above the 12 kHz Nyquist of 24 kHz: filtered out, not folded to 9 kHz
    assert math.sqrt(np.mean(high[middle] ** 2)) < 0.01
