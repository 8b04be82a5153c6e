"""Leasing the adapter a request names, for services that call the FrozenRuntime."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from floe.server.errors import unwrap
from floe.server.registry import AdapterRef

log = logging.getLogger("floe.leases")


async def call(response: Any) -> Any:
    """Await a Ray handle call; a FloeError raised in a replica comes back as itself."""
    try:
        return await response
    except Exception as exc:
        err = unwrap(exc)
        if err is None or err is exc:
            raise
        raise err from exc


@asynccontextmanager
async def leased(registry: Any, adapter: str) -> AsyncIterator[AdapterRef]:
    """The current READY version of `adapter` (404 otherwise), held until the block ends."""
    lease = await call(registry.acquire.remote(adapter))
    try:
        yield lease.ref
    finally:
        # NOTE: shielded: a client hanging up must not leak the lease.
        try:
            await asyncio.shield(registry.release.remote(lease.lease_id))
        except Exception:
            log.exception("could not release adapter lease %s", lease.lease_id)
