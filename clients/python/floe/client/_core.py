"""What the sync and async clients share: options, the wire description of each call, the
retry schedule and response parsing. No I/O here."""

from __future__ import annotations

import abc
import email.utils
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import httpx
from pydantic import BaseModel

from floe.client.errors import APIConnectionError, APITimeoutError, status_error

__version__ = "0.1.0"
T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class ClientOptions:
    """How a client reaches floe. Arguments win over `FLOE_BASE_URL`, `FLOE_API_KEY`,
    `FLOE_ADMIN_KEY`."""

    base_url: str
    api_key: str | None
    admin_key: str | None
    timeout: httpx.Timeout
    max_retries: int
    backoff_base_s: float
    backoff_max_s: float
    max_retry_after_s: float
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, base_url: str | None, api_key: str | None, admin_key: str | None,
              timeout: float | httpx.Timeout, max_retries: int, backoff_base_s: float,
              backoff_max_s: float, max_retry_after_s: float,
              headers: dict[str, str] | None) -> ClientOptions:
        url = base_url or os.environ.get("FLOE_BASE_URL") or "http://127.0.0.1:8000"
        url = url.rstrip("/")
        if url.endswith("/v1"):  # accept the OpenAI-style base URL too
            url = url[:-3]
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        return cls(
            base_url=url,
            api_key=api_key if api_key is not None else os.environ.get("FLOE_API_KEY"),
            admin_key=admin_key if admin_key is not None else os.environ.get("FLOE_ADMIN_KEY"),
            timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
            max_retries=max_retries, backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s,
            max_retry_after_s=max_retry_after_s,
            headers={"User-Agent": f"floe-client/{__version__}", **(headers or {})})

    def auth_headers(self, admin: bool) -> dict[str, str]:
        key = (self.admin_key or self.api_key) if admin else self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def openai_kwargs(self) -> dict[str, Any]:
        return {"base_url": f"{self.base_url}/v1", "api_key": self.api_key or "unused",
                "timeout": self.timeout, "max_retries": self.max_retries}


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP exchange: what to send and how to read the answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    admin: bool = False
    ok_statuses: frozenset[int] = frozenset()  # error statuses that are answers, not errors
    retry: bool = True


def model_parser(model: type[BaseModel]) -> Callable[[httpx.Response], Any]:
    return lambda response: model.model_validate(response.json())


def check(call: Call[T], response: httpx.Response) -> T:
    if response.is_error and response.status_code not in call.ok_statuses:
        raise status_error(response)
    return call.parse(response)


def retry_after_s(response: httpx.Response) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date; None if absent or unreadable."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_delay(options: ClientOptions, attempt: int, response: httpx.Response | None) -> float | None:
    """Seconds to wait before retry number `attempt + 1`, or None: don't retry.

    429 and 503 are retried (the server rejected the request before doing any work), as are
    connection failures (`response` None). The server's `Retry-After` wins; without it the wait
    is exponential, `backoff_base_s * 2**attempt` capped at `backoff_max_s`, with jitter in
    [50%, 100%]. A `Retry-After` beyond `max_retry_after_s` is not waited for.
    """
    if attempt >= options.max_retries:
        return None
    if response is not None:
        if response.status_code not in RETRY_STATUSES:
            return None
        hinted = retry_after_s(response)
        if hinted is not None:
            return hinted if hinted <= options.max_retry_after_s else None
    delay = min(options.backoff_max_s, options.backoff_base_s * 2**attempt)
    return delay * (0.5 + random.random() / 2)


def after_attempt(call: Call[T], options: ClientOptions, attempt: int, response: httpx.Response | None,
                  error: httpx.TransportError | None = None) -> tuple[float | None, T | None]:
    """What one attempt means, for both clients' request loops (no I/O here):
    `(delay, None)`: retry after `delay` seconds; `(None, result)`: done. Raises the error.

    A refused connection is retried (nothing was sent); any other transport error is not (a
    retry could repeat the work)."""
    if error is not None:
        refused = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))
        delay = retry_delay(options, attempt, None) if call.retry and refused else None
        if delay is None:
            cls = APITimeoutError if isinstance(error, httpx.TimeoutException) else APIConnectionError
            raise cls(f"{type(error).__name__}: {error}", request=getattr(error, "_request", None)) from error
        return delay, None
    delay = retry_delay(options, attempt, response) if call.retry else None
    if delay is None:
        return None, check(call, response)
    return delay, None


def openai_client(options: ClientOptions, class_name: str, **kwargs: Any) -> Any:
    """`openai.OpenAI` / `openai.AsyncOpenAI` with the floe client's URL, key, timeout, retries."""
    try:
        import openai
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Floe.openai() needs the openai package: pip install 'floe-client[openai]'") from exc
    return getattr(openai, class_name)(**{**options.openai_kwargs(), **kwargs})


class ClientBase(abc.ABC):
    """The constructor `Floe` and `AsyncFloe` share: options from arguments and environment, one
    pooled httpx client (`_http_class`: httpx.Client or httpx.AsyncClient), then `_attach`."""

    _http_class: ClassVar[Callable[..., Any]]

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None,
                 admin_key: str | None = None, timeout: float | httpx.Timeout = 60.0,
                 max_retries: int = 3, backoff_base_s: float = 0.5, backoff_max_s: float = 8.0,
                 max_retry_after_s: float = 60.0, headers: dict[str, str] | None = None,
                 transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None) -> None:
        self.options = ClientOptions.build(base_url, api_key, admin_key, timeout, max_retries,
                                           backoff_base_s, backoff_max_s, max_retry_after_s, headers)
        self._http = self._http_class(base_url=self.options.base_url, timeout=self.options.timeout,
                                      headers=self.options.headers, transport=transport)
        self._attach()

    @abc.abstractmethod
    def _attach(self) -> None:
        """Create the endpoint groups (`adapters`, `embeddings`, ...)."""


class Resource:
    """A group of endpoints of one client (sync or async)."""

    def __init__(self, client: Any) -> None:
        self._client = client
