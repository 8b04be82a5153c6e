"""Content hashing and immutable snapshots of adapter directories.

An adapter's identity is the hash of its files. Registering copies the files into
`<state_dir>/<hash>/`, so the engine loads exactly the bytes that were hashed even if the
source directory changes afterwards; a changed source re-registered is a new version.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from floe.server.errors import InvalidRequest, PermissionDenied

CHUNK = 1 << 20


def resolve_source(source: str, roots: list[Path]) -> Path:
    """The real directory `source` names, provided it lies under an allowed root."""
    if "://" in source:
        raise InvalidRequest(
            f"source {source!r}: only local directories under the configured adapter roots "
            "are supported", param="source",
        )
    if not roots:
        raise PermissionDenied(
            "no adapter roots are configured; start the server with --adapter-root DIR",
            param="source",
        )
    path = Path(source).expanduser()
    real = Path(os.path.realpath(path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if real == real_root or real_root in real.parents:
            break
    else:
        raise PermissionDenied(
            f"source {source!r} is outside the allowed adapter roots", param="source"
        )
    if not real.is_dir():
        raise InvalidRequest(f"source {source!r} is not a directory", param="source")
    return real


def adapter_files(directory: Path) -> list[Path]:
    """Regular files of an adapter, relative and sorted; links are refused (they could escape)."""
    files = []
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            raise InvalidRequest(f"{path.relative_to(directory)}: symbolic links are not allowed "
                                 "in an adapter directory", param="source")
        if path.is_file():
            files.append(path.relative_to(directory))
    if not files:
        raise InvalidRequest("the adapter directory is empty", param="source")
    return files


def files_digest(root: Path, files: list[Path]) -> str:
    """sha256 over (relative name, bytes) of `files` under `root`, in the order given."""
    digest = hashlib.sha256()
    for rel in files:
        digest.update(str(rel).encode() + b"\0")
        with open(root / rel, "rb") as fh:
            while block := fh.read(CHUNK):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def content_hash(directory: Path) -> str:
    """An adapter's identity: the digest of every file of its directory."""
    return files_digest(directory, adapter_files(directory))


def _publish(target: Path, digest: str, fill) -> Path:
    """Build `target` in a temp sibling with `fill(tmp)`, verify its hash, rename into place."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}.", dir=target.parent))
    try:
        fill(tmp)
        if content_hash(tmp) != digest:
            raise InvalidRequest("the adapter's files do not match their content hash "
                                 "(changed while registering, or damaged in transfer); retry",
                                 param="source")
        tmp.chmod(0o755)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # someone else published the same content first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def snapshot(directory: Path, digest: str, state_dir: Path) -> Path:
    """Copy the adapter to `<state_dir>/<digest>` (once), atomically."""
    def fill(tmp: Path) -> None:
        for rel in adapter_files(directory):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(directory / rel, tmp / rel)

    return _publish(state_dir / digest, digest, fill)


def read_snapshot(path: Path) -> dict[str, bytes]:
    return {str(rel): (path / rel).read_bytes() for rel in adapter_files(path)}


def materialize(files: dict[str, bytes], digest: str, state_dir: Path) -> Path:
    """Write a snapshot received from another node, verifying its hash."""
    def fill(tmp: Path) -> None:
        root = tmp.resolve()
        for rel, data in files.items():
            dest = (tmp / rel).resolve()
            if root not in dest.parents:
                raise InvalidRequest(f"bad file name in adapter snapshot: {rel!r}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)

    return _publish(state_dir / digest, digest, fill)
