"""AdapterRegistry: identity by content, leases, drain, allowed roots, persistence (no engine)."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import pytest

from floe.server.errors import Conflict, InvalidRequest, ModelNotFound, NotFound, PermissionDenied
from floe.server.kinds import EngineLimits
from floe.server.registry import AdapterRegistry, AdapterState


def write_lora(directory: Path, weights: bytes, rank: int = 4) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "target_modules": ["q_proj"], "base_model_name_or_path": "b"}))
    (directory / "adapter_model.safetensors").write_bytes(weights)
    return directory


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "root"


def make_registry(root: Path, tmp_path: Path, **kw) -> AdapterRegistry:
    return AdapterRegistry(roots=[root], state_dir=tmp_path / "state", limits=EngineLimits(max_lora_rank=16),
                           reserved_names=("base-model", "base"), **kw)


def scenario(test):
    """An async test, run on its own event loop (the registry is an asyncio actor)."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        asyncio.run(test(*args, **kwargs))
    return run


async def serving(reg: AdapterRegistry, name: str, directory: Path, weights: bytes):
    """Register a LoRA written to `directory` as `name` and activate it (the engine took it)."""
    ref = await reg.register(name, str(write_lora(directory, weights)))
    await reg.activate(ref.model_id)
    return ref


@scenario
async def test_register_activate_acquire_release(root, tmp_path):
    reg = make_registry(root, tmp_path)
    ref = await reg.register("a", str(write_lora(root / "a", b"one")))
    assert ref.state is AdapterState.LOADING
    with pytest.raises(ModelNotFound):
        await reg.acquire("a")  # not served before the engine accepted it
    await reg.activate(ref.model_id)
    lease = await reg.acquire("a")
    assert lease.ref.model_id == ref.model_id and lease.ref.state is AdapterState.READY
    assert (await reg.acquire(f"a@{ref.version[:6]}")).ref.version == ref.version
    with pytest.raises(ModelNotFound):
        await reg.acquire("a@ffffff")
    assert (await reg.stats())["leases"] == 2
    await reg.release(lease.lease_id)
    await reg.release(lease.lease_id)  # idempotent
    assert (await reg.stats())["leases"] == 1


@scenario
async def test_identity_is_content_and_snapshot_is_immutable(root, tmp_path):
    reg = make_registry(root, tmp_path)
    src = write_lora(root / "a", b"one")
    first = await reg.register("a", str(src))
    await reg.activate(first.model_id)
    assert (await reg.register("a", str(src))).model_id == first.model_id  # idempotent
    write_lora(src, b"two")  # same path, other weights
    second = await reg.register("a", str(src))
    assert second.version != first.version
    assert Path(first.path, "adapter_model.safetensors").read_bytes() == b"one"
    assert Path(second.path, "adapter_model.safetensors").read_bytes() == b"two"


@scenario
async def test_replacing_drains_the_old_version_after_its_leases(root, tmp_path):
    reg = make_registry(root, tmp_path)
    old = await serving(reg, "a", root / "a1", b"one")
    lease = await reg.acquire("a")
    new = await serving(reg, "a", root / "a2", b"two")
    assert (await reg.acquire("a")).ref.model_id == new.model_id
    assert old.model_id in await reg.live_model_ids()  # still draining
    assert (await reg.version(old.model_id)).state is AdapterState.DRAINING
    await reg.release(lease.lease_id)
    assert old.model_id not in await reg.live_model_ids()


@scenario
async def test_remove_waits_for_in_flight_requests(root, tmp_path):
    reg = make_registry(root, tmp_path)
    await serving(reg, "a", root / "a", b"one")
    lease = await reg.acquire("a")
    removal = asyncio.create_task(reg.remove("a"))
    await asyncio.sleep(0.05)
    assert not removal.done()
    with pytest.raises(ModelNotFound):
        await reg.acquire("a")  # no new requests while draining
    await reg.release(lease.lease_id)
    removed = await asyncio.wait_for(removal, 1)
    assert removed.state is AdapterState.UNLOADED
    with pytest.raises(NotFound):
        await reg.remove("a")


@scenario
async def test_remove_gives_up_waiting_after_the_drain_timeout(root, tmp_path):
    reg = make_registry(root, tmp_path, drain_timeout_s=0.05)
    await serving(reg, "a", root / "a", b"one")
    await reg.acquire("a")
    assert (await reg.remove("a")).state is AdapterState.DRAINING


@scenario
async def test_failed_load_keeps_the_previous_version(root, tmp_path):
    reg = make_registry(root, tmp_path)
    good = await serving(reg, "a", root / "a1", b"one")
    bad = await reg.register("a", str(write_lora(root / "a2", b"two")))
    await reg.fail(bad.model_id, "engine said no")
    assert (await reg.acquire("a")).ref.model_id == good.model_id


@scenario
async def test_sources_must_be_under_an_allowed_root(root, tmp_path):
    reg = make_registry(root, tmp_path)
    outside = write_lora(tmp_path / "elsewhere", b"x")
    with pytest.raises(PermissionDenied):
        await reg.register("a", str(outside))
    with pytest.raises(PermissionDenied):
        await reg.register("a", str(root / ".." / "elsewhere"))
    link = root / "link"
    root.mkdir(exist_ok=True)
    link.symlink_to(outside)
    with pytest.raises(PermissionDenied):
        await reg.register("a", str(link))  # resolved through the link: outside
    inner = write_lora(root / "with-link", b"y")
    (inner / "escape").symlink_to(outside / "adapter_model.safetensors")
    with pytest.raises(InvalidRequest):
        await reg.register("a", str(inner))
    with pytest.raises(InvalidRequest):
        await reg.register("a", "s3://bucket/adapter")
    with pytest.raises(PermissionDenied):
        await AdapterRegistry([], tmp_path / "s", EngineLimits()).register("a", str(outside))


@scenario
async def test_links_dotdot_and_archives_never_lead_outside_a_root(root, tmp_path):
    """Every spelling of a way out is refused; `..` that stays inside a root is just a path."""
    import tarfile

    reg = make_registry(root, tmp_path)
    outside = write_lora(tmp_path / "elsewhere", b"x")
    inside = write_lora(root / "ok", b"ok")
    assert (await reg.register("ok", str(root / "ok" / ".." / "ok"))).path  # stays inside: fine
    for escape in (f"{root}/ok/../../elsewhere", f"{root}/../elsewhere/.", "/", f"{root}/..",
                   str(outside / ".." / ".." / tmp_path.name / "elsewhere")):
        with pytest.raises(PermissionDenied):
            await reg.register("a", escape)
    # a link to a directory inside the adapter, even to one inside the root, is refused: links
    # are never followed into a snapshot
    linked = write_lora(root / "dir-link", b"d")
    (linked / "sub").symlink_to(inside, target_is_directory=True)
    with pytest.raises(InvalidRequest, match="symbolic links"):
        await reg.register("a", str(linked))
    # a link at the top, to a directory inside the root, resolves there: that directory is served
    (root / "alias").symlink_to(inside, target_is_directory=True)
    assert (await reg.register("alias", str(root / "alias"))).version == (await reg.register("ok", str(inside))).version
    # archives are not accepted at all, so none of their members (here `../escape`) is unpacked
    archive = root / "adapter.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(inside / "adapter_config.json", arcname="../escape/adapter_config.json")
    with pytest.raises(InvalidRequest, match="archives are not accepted"):
        await reg.register("a", str(archive))
    assert not (root.parent / "escape").exists()
    # bad spellings are a 400, not a server error
    for bad in (f"{root}/ok\0", f"{root}/{'x' * 300}", "~no-such-user-floe/x"):
        with pytest.raises((InvalidRequest, PermissionDenied)):
            await reg.register("a", bad)


@scenario
async def test_bad_names_and_bad_adapters(root, tmp_path):
    reg = make_registry(root, tmp_path)
    src = write_lora(root / "a", b"one")
    for name in ("", "has space", "a:b", "a@b", "x" * 65, "-lead"):
        with pytest.raises(InvalidRequest):
            await reg.register(name, str(src))
    with pytest.raises(Conflict):
        await reg.register("base-model", str(src))
    with pytest.raises(InvalidRequest, match="rank"):
        await reg.register("big", str(write_lora(root / "big", b"x", rank=64)))
    (root / "empty").mkdir()
    with pytest.raises(InvalidRequest):
        await reg.register("empty", str(root / "empty"))
    with pytest.raises(InvalidRequest):
        await reg.register("missing", str(root / "missing"))


@scenario
async def test_registrations_survive_a_restart(root, tmp_path):
    reg = make_registry(root, tmp_path)
    ref = await serving(reg, "a", root / "a", b"one")
    reborn = make_registry(root, tmp_path)
    lease = await reborn.acquire("a")
    assert lease.ref.model_id == ref.model_id
    await reborn.release(lease.lease_id)
    await reborn.remove("a")
    assert await make_registry(root, tmp_path).list() == []


def test_materialize_verifies_hash_and_names(tmp_path):
    from floe.server.registry import snapshots

    src = write_lora(tmp_path / "src", b"weights")
    digest = snapshots.content_hash(src)
    files = snapshots.read_snapshot(src)
    out = snapshots.materialize(files, digest, tmp_path / "node2")
    assert snapshots.content_hash(out) == digest
    with pytest.raises(InvalidRequest):
        snapshots.materialize({**files, "adapter_model.safetensors": b"tampered"}, "0" * 64, tmp_path / "n3")
    for member in ("../escape", "/etc/escape", "a/../../escape", "./a", "a//b", "", "a\\..\\b", "a\0"):
        with pytest.raises(InvalidRequest):
            snapshots.materialize({member: b"x"}, digest[::-1], tmp_path / "n4")
    assert not list((tmp_path / "n3").iterdir()) and not (tmp_path / "n4").exists()
    assert not (tmp_path / "escape").exists()
