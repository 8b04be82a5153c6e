"""The adapter-kind tests share the FrozenRuntime tests' fixtures (tiny model, trained adapter)."""

from tests.runtime.conftest import llm, tiny_dir, ts_adapter  # noqa: F401  (pytest fixtures)
