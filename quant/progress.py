"""Progress reporting from inside methods without threading a callback through every call."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Handler = Callable[[str, int, int], None]
_HANDLER: ContextVar[Handler | None] = ContextVar("floe_quant_progress", default=None)


def report(task: str, done: int, total: int) -> None:
    """Methods call this as work advances (e.g. per decoder layer or per training step)."""
    handler = _HANDLER.get()
    if handler is not None:
        handler(task, done, total)


@contextmanager
def progress_handler(handler: Handler) -> Iterator[None]:
    token = _HANDLER.set(handler)
    try:
        yield
    finally:
        _HANDLER.reset(token)
