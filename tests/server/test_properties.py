"""Properties (hypothesis): model names parse one way, SSE frames carry any text, snapshot members
stay inside the snapshot. No server: each property runs on the functions the server runs."""

from __future__ import annotations

import asyncio
import json
import re
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from floe.server.engine.messages import SSE_DONE, sse_event, sse_json
from floe.server.errors import Conflict, InvalidRequest, ModelNotFound
from floe.server.kinds import EngineLimits
from floe.server.names import BASE_ALIAS, split_model, split_version, valid_name
from floe.server.registry import AdapterRef, AdapterRegistry, snapshots
from tests.server.test_registry import write_lora

NAME_CHARS = string.ascii_letters + string.digits + "._-"
names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
versions = st.text("0123456789abcdef", min_size=1, max_size=64)
# any text, the characters a name or a frame must survive among it
texts = st.lists(st.characters(codec="utf-8") | st.sampled_from(["\n", "\r", "\r\n", "@", ":", "data:", " ", "\x85",
                                                                 "\u2028"])).map("".join)
payloads = st.recursive(st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                        max_leaves=12)
settings.register_profile("floe", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("floe")


# -- model names ---------------------------------------------------------------------------------

@given(texts)
def test_a_name_is_valid_exactly_when_it_follows_the_rule(text):
    follows = (1 <= len(text) <= 64 and text[0] in string.ascii_letters + string.digits
               and all(c in NAME_CHARS for c in text))
    assert valid_name(text) is follows


@given(names)
def test_a_trailing_newline_never_makes_a_name(name):
    assert valid_name(name) and not valid_name(name + "\n") and not valid_name(name + "\r\n")


@given(names, versions)
def test_name_at_version_parses_back(name, version):
    assert "@" not in name and ":" not in name
    assert split_version(name) == (name, None)
    assert split_version(f"{name}@{version}") == (name, version)
    digest = (version * 64)[:64]
    model_id = AdapterRef(name=name, version=digest, kind="lora", engine="llm", path="/").model_id
    assert split_version(model_id) == (name, digest[:12])


@given(names, texts)
def test_anything_but_lowercase_hex_after_the_at_names_no_adapter(name, version):
    assume(re.fullmatch(r"[0-9a-f]{1,64}", version) is None)
    assert split_version(f"{name}@{version}") is None


@given(names, names, texts)
def test_the_base_its_alias_and_prefixed_adapters(base, name, rest):
    assert split_model(base, base) is None and split_model(BASE_ALIAS, base) is None
    assert split_model(f"{base}:{name}", base) == name
    assert split_model(f"{BASE_ALIAS}:{rest}", base) == (rest or None)
    if name not in (base, BASE_ALIAS) and not name.startswith((base + ":", BASE_ALIAS + ":")):
        assert split_model(name, base) == name


@pytest.fixture(scope="module")
def registry_with_a(tmp_path_factory):
    """A registry serving one adapter, `a`; its loop, for the properties to call it on."""
    tmp = tmp_path_factory.mktemp("props")
    reg = AdapterRegistry(roots=[tmp / "root"], state_dir=tmp / "state", limits=EngineLimits(max_lora_rank=16),
                          reserved_names=("base-model", "base"))
    loop = asyncio.new_event_loop()
    ref = loop.run_until_complete(reg.register("a", str(write_lora(tmp / "root" / "a", b"weights"))))
    loop.run_until_complete(reg.activate(ref.model_id))
    yield reg, ref, loop, tmp / "root"
    loop.close()


@given(texts | st.sampled_from(["a", "a@", "a@0", "a@A", "a@abc\n", " a", "a\n", "a@@b"]))
def test_acquire_leases_the_named_adapter_or_answers_404(registry_with_a, model):
    reg, ref, loop, _ = registry_with_a
    try:
        lease = loop.run_until_complete(reg.acquire(model))
    except ModelNotFound:
        parsed = split_version(model)
        assert parsed is None or parsed[0] != "a" or (parsed[1] and not ref.version.startswith(parsed[1]))
        return
    loop.run_until_complete(reg.release(lease.lease_id))
    assert split_version(model) is not None and lease.ref.model_id == ref.model_id
    assert model == "a" or (model.startswith("a@") and ref.version.startswith(model[2:]))


@settings(max_examples=60)
@given(texts | names)
def test_register_takes_exactly_the_valid_names(registry_with_a, name):
    reg, _, loop, root = registry_with_a
    try:
        ref = loop.run_until_complete(reg.register(name, str(root / "a")))
    except InvalidRequest as exc:
        assert not valid_name(name) and exc.param == "name"
    except Conflict:
        assert name in ("base-model", "base")
    else:
        assert valid_name(name) and ref.name == name


# -- SSE framing ---------------------------------------------------------------------------------

def parse(stream: bytes, cuts: list[int] = ()) -> list[str]:
    """The events' data as the official client's SSE decoder reads them, the bytes arriving in
    pieces cut at `cuts` (as a network delivers them)."""
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    pieces = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    return [event.data for event in SSEDecoder().iter_bytes(iter(pieces))]


@given(texts)
def test_any_text_is_one_event_with_that_text(text):
    assert parse(sse_event(text).encode()) == [re.sub("\r\n|\r", "\n", text)]


@given(st.lists(payloads, max_size=6), st.lists(st.integers(min_value=0), max_size=8))
def test_json_payloads_round_trip_however_the_stream_is_cut(items, cuts):
    stream = ("".join(sse_json(item) for item in items) + SSE_DONE).encode()
    *data, done = parse(stream, cuts)
    assert done == "[DONE]" and [json.loads(d) for d in data] == items


@given(texts)
def test_a_chat_delta_of_any_text_reaches_the_client_unchanged(text):
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    (data,) = parse(sse_json(chunk).encode(), [len(text) // 2, 7])
    assert json.loads(data)["choices"][0]["delta"]["content"] == text


# -- snapshot members ----------------------------------------------------------------------------

members = st.lists(st.text(st.sampled_from(["a", "b", ".", "/", "\\", "\0", "é"]), max_size=12)
                   | st.sampled_from(["..", "../x", "/x", "a/../../x", "a/./b", "a//b", "x/.."]),
                   min_size=1, max_size=4)


@settings(max_examples=150)
@given(members)
def test_snapshot_members_land_inside_the_snapshot_or_are_refused(names_):
    files = {name: name.encode("utf-8", "surrogateescape") for name in names_}
    with tempfile.TemporaryDirectory() as tmp:
        base, src = Path(tmp) / "node", Path(tmp) / "src"
        try:
            accepted = [snapshots.member_path(name) for name in files]
        except InvalidRequest:
            with pytest.raises(InvalidRequest):
                snapshots.materialize(files, "0" * 64, base)
            assert not base.exists()
            return
        for path in accepted:
            assert not path.is_absolute() and ".." not in path.parts
        try:  # the sender's side: the same members as a directory (`a` and `a/b` cannot both be)
            for path, data in zip(accepted, files.values()):
                (src / path).parent.mkdir(parents=True, exist_ok=True)
                (src / path).write_bytes(data)
        except OSError:
            assume(False)
        assume(len({str(p) for p in accepted}) == len(accepted))  # `a/b` and `a//b` are refused; no others alias
        out = snapshots.materialize(files, snapshots.content_hash(src), base)
        assert out.parent == base
        written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        assert written == sorted(str(p) for p in accepted)
        outside = [p for p in Path(tmp).rglob("*") if base not in (p, *p.parents) and src not in (p, *p.parents)]
        assert outside == [], outside
