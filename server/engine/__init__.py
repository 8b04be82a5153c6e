"""Engines. vLLM is imported only inside this package (DESIGN.md)."""
