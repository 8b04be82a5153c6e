"""Parsing wire types: a pydantic validation failure is a 400 with the offending field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from floe.server.errors import InvalidRequest

T = TypeVar("T", bound=BaseModel)


def parse(cls: type[T], body: dict[str, Any]) -> T:
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        raise InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"], param=param) from exc
