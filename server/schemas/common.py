"""Parsing wire types: a pydantic validation failure is a 400 with the offending field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from floe.server.errors import validation_error

T = TypeVar("T", bound=BaseModel)


def parse(cls: type[T], body: dict[str, Any]) -> T:
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from exc
