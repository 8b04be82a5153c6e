"""Engines. vLLM is imported only inside this package (docs/design.md)."""
