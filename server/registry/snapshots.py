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
from pathlib import Path, PurePosixPath

from floe.server.errors import InvalidRequest, PermissionDenied

CHUNK = 1 << 20


def resolve_source(source: str, roots: list[Path]) -> Path:
    """The real directory `source` names, provided it lies under an allowed root.

    Links and `..` are resolved before the root check, so neither leads outside a root; an
    archive (any file) is refused: floe unpacks nothing, so no archive member can land outside
    the snapshot."""
    if "\0" in source:
        raise InvalidRequest("source: a path cannot contain NUL characters", param="source")
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
    try:
        path = Path(source).expanduser()
    except RuntimeError as exc:  # `~user` of no known user
        raise InvalidRequest(f"source {source!r}: {exc}", param="source") from exc
    real = Path(os.path.realpath(path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if real == real_root or real_root in real.parents:
            break
    else:
        raise PermissionDenied(
            f"source {source!r} is outside the allowed adapter roots", param="source"
        )
    try:
        is_dir, exists = real.is_dir(), real.exists()
    except OSError as exc:  # e.g. a name too long for the filesystem
        raise InvalidRequest(f"source {source!r} cannot be read: {exc.strerror}", param="source") from exc
    if not is_dir:
        what = "a file; archives are not accepted, unpack it into a directory" if exists else "not a directory"
        raise InvalidRequest(f"source {source!r} is {what}", param="source")
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
            # NOTE: a file swapped for a link after the listing is copied as the link, which the
            # hash check then refuses, never as the file it points to.
            shutil.copy2(directory / rel, tmp / rel, follow_symlinks=False)

    return _publish(state_dir / digest, digest, fill)


def read_snapshot(path: Path) -> dict[str, bytes]:
    return {str(rel): (path / rel).read_bytes() for rel in adapter_files(path)}


def member_path(rel: str) -> PurePosixPath:
    """A snapshot member's name as a path inside the snapshot, or 400: only plain relative names
    (no absolute path, `..`, `.`, empty part, backslash or NUL) can name a file there."""
    path = PurePosixPath(rel)
    if (not rel or "\0" in rel or "\\" in rel or path.is_absolute()
            or any(part in ("", ".", "..") for part in rel.split("/"))):
        raise InvalidRequest(f"bad file name in adapter snapshot: {rel!r}")
    return path


def materialize(files: dict[str, bytes], digest: str, state_dir: Path) -> Path:
    """Write a snapshot received from another node (its members named as `read_snapshot` names
    them), verifying its hash."""
    members = {member_path(rel): data for rel, data in files.items()}

    def fill(tmp: Path) -> None:
        for rel, data in members.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)

    return _publish(state_dir / digest, digest, fill)
