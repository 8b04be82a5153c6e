"""Parsing wire types: a pydantic validation failure is a 400 with the offending field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from floe.server.errors import InvalidRequest

T = TypeVar("T", bound=BaseModel)
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list"}


def parse(cls: type[T], body: dict[str, Any]) -> T:
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        # NOTE: union members appear in `loc` as type tags (`list[float]`, `str`): not fields.
        param = ".".join(str(p) for p in first.get("loc", ())
                         if not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS))) or None
        raise InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"], param=param) from exc
