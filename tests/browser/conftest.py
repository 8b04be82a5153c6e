"""tests/browser: the playground in a real headless Chromium, against the real server that
tests/clients and tests/docs share (tests/clients/live.py; one server per session)."""

from tests.clients.live import (  # noqa: F401  (fixtures and hooks are found by name)
    floe_live,
    pytest_collection_finish,
    pytest_runtest_teardown,
    pytest_sessionfinish,
)
