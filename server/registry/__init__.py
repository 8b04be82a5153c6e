"""Adapter registry: names -> content-hashed versions, leases, and the load/drain state machine."""

from floe.server.registry.registry import AdapterRef, AdapterRegistry, AdapterState, Lease

__all__ = ["AdapterRef", "AdapterRegistry", "AdapterState", "Lease"]
