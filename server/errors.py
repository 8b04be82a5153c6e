"""Typed domain errors and the one place that maps them to HTTP and OpenAI's error body.

Domain code raises these; `floe.server.gateway.errors` turns them into
`{"error": {"message", "type", "param", "code"}}` with the status given here. Nothing matches
errors by their message text.
"""

from __future__ import annotations

from typing import Any

# OpenAI's error `type` by HTTP status; other 4xx are `invalid_request_error`
TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error",
         500: "internal_error", 503: "service_unavailable"}


class FloeError(Exception):
    """Base of every error floe reports to a client."""

    status: int = 500
    type: str = "internal_error"
    code: str | None = None

    def __init_subclass__(cls, status: int | None = None, code: str | None = "", **kwargs: Any) -> None:
        """`class Conflict(FloeError, status=409, code="conflict")`: the status sets the OpenAI
        error `type` (`TYPES`); `code` is the body's default code."""
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status, cls.type = status, TYPES.get(status, "invalid_request_error")
        if code != "":
            cls.code = code

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def __reduce__(self):  # survive pickling across Ray processes with their fields
        return (_rebuild, (type(self), self.message, self.param, self.code, self.headers))


def _rebuild(cls, message, param, code, headers):
    return cls(message, param=param, code=code, headers=headers)


class InvalidRequest(FloeError, status=400, code=None):
    """Malformed input, or a value the server cannot take."""


class AuthenticationFailed(FloeError, status=401, code="invalid_api_key"):
    """No key, or not a key this server knows."""


class PermissionDenied(FloeError, status=403, code="permission_denied"):
    """A known key that may not do this (adapter admin), or a source outside the allowed roots."""


class NotFound(FloeError, status=404, code="not_found"):
    """A route, adapter, collection or session that does not exist."""


class ModelNotFound(NotFound, code="model_not_found"):
    """OpenAI's answer for an unknown `model`."""


class Conflict(FloeError, status=409, code="conflict"):
    """A name already taken by something else."""


class PayloadTooLarge(FloeError, status=413, code="request_too_large"):
    """A body, image or clip over the configured limit."""


class Overloaded(FloeError, status=429, code="overloaded"):
    """Queues are full: retry after `Retry-After`."""


class RateLimited(FloeError, status=429, code="rate_limit_exceeded"):
    """A key over its own limits (`auth.limits`): retry after `Retry-After`."""


class NotReady(FloeError, status=503, code="not_ready"):
    """The engine or a replica is not (yet, or no longer) able to answer."""


class EngineError(FloeError, status=500, code="engine_error"):
    """The engine failed on a request it had accepted."""


_BY_STATUS: dict[int, type[FloeError]] = {
    400: InvalidRequest, 401: AuthenticationFailed, 403: PermissionDenied, 404: NotFound,
    409: Conflict, 413: PayloadTooLarge, 429: Overloaded, 503: NotReady,
}


def from_status(status: int, message: str, *, param: str | None = None,
                code: str | None = None) -> FloeError:
    """An engine reported an error with an HTTP status: give it its typed class."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        err: FloeError = EngineError(message, param=param, code=code)
        err.status = status if 400 <= status < 600 else 500
        return err
    return cls(message, param=param, code=code)


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "body"}


def validation_error(errors: list[dict[str, Any]]) -> InvalidRequest:
    """The 400 for a pydantic validation failure (FastAPI's, a wire type's, vLLM's protocol's):
    the first error, with its field path as `param`."""
    first = errors[0]
    # NOTE: union members appear in `loc` as type tags (`list[float]`, `str`): not fields.
    param = ".".join(str(p) for p in first.get("loc", ())
                     if not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS))) or None
    return InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"], param=param)


def unwrap(exc: BaseException) -> FloeError | None:
    """The FloeError behind an exception, also when Ray wrapped it on the way from a replica."""
    from ray.exceptions import RayTaskError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, FloeError):
        return exc
    if isinstance(exc, BackPressureError):
        return Overloaded("the server is overloaded; retry shortly", headers={"Retry-After": "1"})
    if isinstance(exc, DeploymentUnavailableError):
        return NotReady("the model is not available yet; retry shortly", headers={"Retry-After": "5"})
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if cause is not None and cause is not exc:
            return unwrap(cause)
    return None


async def call(response: Any) -> Any:
    """Await a Ray handle call; a FloeError raised in a replica comes back as itself."""
    try:
        return await response
    except Exception as exc:
        err = unwrap(exc)
        if err is None or err is exc:
            raise
        raise err from exc
