"""Names users give things (adapters, collections) and what a request's `model` names.

A request's `model` is the base (its name or `base`), `<base>:<adapter>`, or an adapter:
`name` (its current version) or `name@version` (a prefix of its content hash, lowercase hex).
Names never contain `@` or `:`, so each spelling parses one way.
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
VERSION_RE = re.compile(r"[0-9a-f]{1,64}")
BASE_ALIAS = "base"


def valid_name(name: object) -> bool:
    # NOTE: fullmatch, not `^...$`: `$` also matches before a trailing newline ("a\n").
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def split_model(model: str, base_name: str) -> str | None:
    """The adapter a `model` names: None for the base, else the adapter (`name[@version]`)."""
    if model in (base_name, BASE_ALIAS):
        return None
    for prefix in (base_name + ":", BASE_ALIAS + ":"):
        if model.startswith(prefix):
            return model[len(prefix):] or None
    return model


def split_version(adapter: str) -> tuple[str, str | None] | None:
    """`name` -> (name, None); `name@version` -> (name, version); None when `adapter` is neither
    (a bad name, or an `@` not followed by lowercase hex): no adapter can have that name."""
    name, at, version = adapter.partition("@")
    if not valid_name(name) or (at and VERSION_RE.fullmatch(version) is None):
        return None
    return name, version if at else None
