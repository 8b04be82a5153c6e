"""Pydantic wire types of the FrozenRuntime endpoints."""
