"""tests/clients: the SDK against the real server (shared with tests/docs, see live.py)."""

from tests.clients.live import (  # noqa: F401  (fixtures and hooks are found by name)
    floe_live,
    pytest_collection_finish,
    pytest_runtest_teardown,
    pytest_sessionfinish,
)
