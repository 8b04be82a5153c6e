"""Names users give things (adapters, collections) and what a request's `model` names."""

from __future__ import annotations

import re

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
BASE_ALIAS = "base"


def valid_name(name: object) -> bool:
    return isinstance(name, str) and NAME_RE.match(name) is not None


def split_model(model: str, base_name: str) -> str | None:
    """The adapter a `model` names: None for the base, else the adapter (`name[@version]`)."""
    if model in (base_name, BASE_ALIAS):
        return None
    for prefix in (base_name + ":", BASE_ALIAS + ":"):
        if model.startswith(prefix):
            return model[len(prefix):] or None
    return model
