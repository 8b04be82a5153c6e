"""The demo adapters of the default `floe serve`: each kind that declares `demo` builds one for
the built-in base, offline and deterministically, cached by the hash of its builder's code and
the base's fingerprint (a changed builder never reuses an old build)."""

from __future__ import annotations

import hashlib
import inspect
import logging
import shutil
import tempfile
from importlib import import_module
from pathlib import Path

from floe.server.kinds import get_kind, known_kinds

log = logging.getLogger("floe.demos")


def demo_name(kind: str) -> str:
    return f"demo-{kind.replace('_', '-')}"


def _builder(spec: str):
    module, _, function = spec.partition(":")
    return import_module(module), getattr(import_module(module), function)


def _package_source(module) -> str:
    """The code of the builder's whole package (the demo depends on its kind's model and
    trainer too), so any change there rebuilds the demo."""
    package = Path(inspect.getfile(module)).parent
    return "".join(path.read_text() for path in sorted(package.rglob("*.py")))


def prepare_demos(base_dir: Path, cache: Path, progress=lambda message: None) -> dict[str, Path]:
    """name -> adapter directory, for every kind with a demo (built now if not cached)."""
    out: dict[str, Path] = {}
    for kind in known_kinds():
        target = prepare_demo(kind, base_dir, cache, progress)
        if target is not None:
            out[demo_name(kind)] = target
    return out


def prepare_demo(kind: str, base_dir: Path, cache: Path, progress=lambda message: None) -> Path | None:
    """The directory of `kind`'s demo adapter for `base_dir` (built now if not cached); None when
    the kind has no demo or its build failed. A demo built on another kind's demo (grounding on
    vision) gets that one through here."""
    spec = get_kind(kind).demo
    if not spec:
        return None
    module, build = _builder(spec)
    target = cache / "demo-adapters" / f"{kind}-{_key(kind, base_dir)}"
    if not target.is_dir():
        progress(f"building the {kind} demo adapter (once; cached in {target.parent})")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=target.parent))
        try:
            build(base_dir, tmp / "adapter")
            (tmp / "adapter").rename(target)  # atomic: a half-built demo is never served
        except (OSError, RuntimeError) as exc:  # e.g. a tool the demo's data needs is missing
            if target.is_dir():  # another process built the same demo meanwhile
                return target
            log.warning("not serving the %s demo: %s", kind, exc)
            progress(f"skipped the {kind} demo adapter: {exc}")
            return None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _key(kind: str, base_dir: Path) -> str:
    """The hash of the builder's package, the base's fingerprint and the keys of the demos the
    builder's module names in `DEMO_DEPENDS` (e.g. grounding's, built on vision's)."""
    from floe.server.runtime.model import base_fingerprint

    module, _ = _builder(str(get_kind(kind).demo))
    depends = "".join(_key(dep, base_dir) for dep in getattr(module, "DEMO_DEPENDS", ()))
    return hashlib.sha256((_package_source(module) + base_fingerprint(base_dir) + depends).encode()).hexdigest()[:12]
