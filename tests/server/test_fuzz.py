"""Schemathesis over the live server's own OpenAPI document: no input is a server error.

Every operation is called with generated inputs (valid ones and not) with the admin key (which
is also an API key, so every route does its work) and with no key; the admin routes also with
an API key. Each answer must be below 500 and each JSON error carry OpenAI's body; without a key
every protected route is a 401, and an API key on the adapter API a 403.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.server.live import ADMIN_KEY, API_KEY

pytestmark = pytest.mark.slow

OPEN = {"/health", "/ready"}
MINILM = "all-MiniLM-L6-v2"
COLLECTION = "fuzz-notes"
ERROR_FIELDS = {"message", "type", "param", "code"}
EXAMPLES = 10  # per operation and way: every validator is reached; the whole test ~3 min on 2 CPUs


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def collections(url: str) -> set[str]:
    listed = httpx.get(f"{url}/v1/retrieval/collections", headers=bearer(API_KEY), timeout=60)
    return {c["id"] for c in listed.json()["data"]}


def pinned(spec: dict, url: str) -> dict:
    """The document with every body's `model` one of the models the server has (and MiniLM), and
    a collection's `{name}` the fixture's collection: random names would stop every case at a
    404, short of the work behind it."""
    listed = httpx.get(f"{url}/v1/models", headers=bearer(API_KEY), timeout=60).json()["data"]
    models = {"type": "string", "enum": [m["id"] for m in listed] + [MINILM]}
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            for param in operation.get("parameters", ()):
                if path.startswith("/v1/retrieval/collections/") and param["name"] == "name":
                    param["schema"] = {"type": "string", "enum": [COLLECTION]}
            for content in operation.get("requestBody", {}).get("content", {}).values():
                properties = content["schema"].get("properties", {})
                if "model" in properties:
                    properties["model"] = models
    return spec


def fuzz(url: str, headers: dict[str, str], expect: Callable[[str, int], int | None] = lambda path, status: None,
         examples: int = EXAMPLES) -> tuple[list[str], Counter[str]]:
    """Every operation of the server's document, `examples` generated cases each, sent with
    `headers`: the failures, one line each (a 5xx, an error without OpenAI's body, or a status
    other than `expect(path, status)` when that says one), and the answers by operation and
    status class (`POST /v1/embeddings 2xx`), which show that the cases reached the routes."""
    spec = pinned(httpx.get(f"{url}/openapi.json", headers=bearer(API_KEY), timeout=30).json(), url)
    failures: list[str] = []
    answers: Counter[str] = Counter()
    operations = [result.ok() for result in schemathesis.openapi.from_dict(spec).get_all_operations()]
    assert len(operations) >= 20, sorted(spec)
    for operation in operations:

        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)
        @given(operation.as_strategy())
        def run(case) -> None:
            response = case.call(base_url=url, headers=headers, timeout=300)
            status, wanted = response.status_code, expect(case.path, response.status_code)
            answers[f"{case.operation.label} {status // 100}xx"] += 1
            error = None
            content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: lists of values
            if status >= 400 and content_type.startswith("application/json"):
                error = response.json().get("error")
            if status >= 500 or (wanted is not None and status != wanted) or (
                    status >= 400 and not (isinstance(error, dict) and set(error) == ERROR_FIELDS)):
                failures.append(f"{case.operation.label} -> {status} {response.text[:300]!r}\n  "
                                f"{case.as_curl_command()[:600]}")

        run()
    return failures, answers


@pytest.fixture(scope="module")
def fuzzed(live_server):
    """The live server's URL, with the collection the cases name; collections the fuzzing
    creates are deleted afterwards (they would outlive the module in the session's server)."""
    before = collections(live_server.url)
    created = httpx.post(f"{live_server.url}/v1/retrieval/collections", headers=bearer(API_KEY), timeout=120,
                         json={"name": COLLECTION, "model": MINILM})
    assert created.status_code in (200, 201), created.text
    yield live_server.url
    for name in (collections(live_server.url) - before) | {COLLECTION}:
        httpx.delete(f"{live_server.url}/v1/retrieval/collections/{name}", headers=bearer(API_KEY), timeout=60)


def test_no_input_is_a_server_error_with_a_key(fuzzed):
    failures, answers = fuzz(fuzzed, bearer(ADMIN_KEY))
    print("answers:", dict(sorted(answers.items())))
    assert not failures, "\n".join(failures)
    # some cases got through the validators to the work itself
    assert {"GET /v1/models 2xx", "POST /v1/adapters 4xx", "POST /v1/chat/completions 4xx"} <= set(answers)
    assert sum(n for label, n in answers.items() if label.startswith("POST") and label.endswith("2xx")) > 0


def test_without_a_key_every_protected_route_is_401(fuzzed):
    failures, _ = fuzz(fuzzed, {}, lambda path, status: None if path in OPEN else 401)
    assert not failures, "\n".join(failures)


def test_an_api_key_on_the_adapter_api_is_403(fuzzed):
    failures, _ = fuzz(fuzzed, bearer(API_KEY), lambda path, status: 403 if path.startswith("/v1/adapters") else None,
                       examples=5)
    assert not failures, "\n".join(failures)
