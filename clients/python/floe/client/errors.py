"""The client's error hierarchy, built from OpenAI's error body and keyed by HTTP status.

floe answers every error as `{"error": {"message", "type", "param", "code"}}`; `raise_for`
turns such an answer into the exception class of its status, carrying those four fields.
"""

from __future__ import annotations

import json
from typing import Any

import httpx


class FloeClientError(Exception):
    """Base of everything this package raises."""


class APIConnectionError(FloeClientError):
    """The server could not be reached (refused, reset, DNS), after any retries."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.request = request


class APITimeoutError(APIConnectionError):
    """The request took longer than the client's timeout."""


class APIStatusError(FloeClientError):
    """The server answered with an error status (4xx / 5xx)."""

    status_code: int = 0

    def __init__(self, message: str, *, response: httpx.Response, body: Any,
                 type: str | None = None, param: str | None = None, code: str | None = None) -> None:
        super().__init__(f"{response.status_code}: {message}")
        self.message = message
        self.response = response
        self.status_code = response.status_code
        self.body = body
        self.type = type
        self.param = param
        self.code = code

    @property
    def headers(self) -> httpx.Headers:
        return self.response.headers


class BadRequestError(APIStatusError):
    """400: the request is malformed or a value is out of range (`param` names it)."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this (e.g. an API key on the adapter admin routes), or a source
    outside the allowed adapter roots."""


class NotFoundError(APIStatusError):
    """404: unknown model, adapter, collection or route."""


class ConflictError(APIStatusError):
    """409: the name or resource is in a state that forbids the operation."""


class PayloadTooLargeError(APIStatusError):
    """413: the request body is larger than the server's `http.max_body_bytes`."""


class UnprocessableEntityError(APIStatusError):
    """422."""


class RateLimitError(APIStatusError):
    """429: the server is overloaded; retried with backoff before this is raised."""


class InternalServerError(APIStatusError):
    """5xx other than 503."""


class ServiceUnavailableError(InternalServerError):
    """503: the engine is not ready yet; retried with backoff before this is raised."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError,
    404: NotFoundError, 409: ConflictError, 413: PayloadTooLargeError,
    422: UnprocessableEntityError, 429: RateLimitError, 503: ServiceUnavailableError,
}


def error_class(status: int) -> type[APIStatusError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return InternalServerError if status >= 500 else APIStatusError


def status_error(response: httpx.Response) -> APIStatusError:
    """The typed exception for an error response (its body read already)."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = response.text
    fields = body.get("error") if isinstance(body, dict) else None
    if isinstance(fields, dict):
        message = str(fields.get("message") or response.reason_phrase)
        return error_class(response.status_code)(
            message, response=response, body=body, type=fields.get("type"),
            param=fields.get("param"), code=fields.get("code"))
    message = body if isinstance(body, str) and body else response.reason_phrase
    return error_class(response.status_code)(str(message), response=response, body=body)


def raise_for(response: httpx.Response) -> None:
    if response.is_error:
        raise status_error(response)
