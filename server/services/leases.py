"""Leasing the adapter a request names, for the endpoint family that serves it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from floe.server.errors import InvalidRequest, call
from floe.server.registry import AdapterRef

log = logging.getLogger("floe.leases")


def check_serves(ref: AdapterRef, family: str) -> None:
    """400 unless the adapter's kind answers `family` (e.g. a LoRA asked for forecasts)."""
    if family not in ref.serves:
        raise InvalidRequest(f"`{ref.name}` is a {ref.kind} adapter; it serves "
                             f"{', '.join(ref.serves) or 'no endpoint'}, not {family}", param="model")


@asynccontextmanager
async def leased(registry: Any, adapter: str, family: str) -> AsyncIterator[AdapterRef]:
    """The current READY version of `adapter` (404 otherwise), held until the block ends."""
    lease = await call(registry.acquire.remote(adapter))
    try:
        check_serves(lease.ref, family)
        yield lease.ref
    finally:
        # NOTE: shielded: a client hanging up must not leak the lease.
        try:
            await asyncio.shield(registry.release.remote(lease.lease_id))
        except Exception:
            log.exception("could not release adapter lease %s", lease.lease_id)
