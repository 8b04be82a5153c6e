"""floe's Python SDK: `Floe` (sync) and `AsyncFloe` (asyncio) for floe's own endpoints, and a
configured `openai` client (`Floe.openai()`) for the OpenAI-shaped ones."""

from floe.client._async import AsyncFloe
from floe.client._core import __version__
from floe.client._sync import Floe
from floe.client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FloeClientError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)

__all__ = [
    "Floe", "AsyncFloe", "__version__",
    "FloeClientError", "APIConnectionError", "APITimeoutError", "APIStatusError",
    "BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError",
    "ConflictError", "PayloadTooLargeError", "UnprocessableEntityError", "RateLimitError",
    "ServiceUnavailableError", "InternalServerError",
]
