"""Media parts of a request (images, audio) -> bytes, within the configured limits.

A media part is a `data:<mime>;base64,<payload>` URL, or an `http(s)` URL fetched only when
`media.allowed_domains` names its host, with a timeout and a size cap, and never from a
loopback, private, link-local or otherwise non-global address (checked on the resolved
address the connection actually uses). Every refusal is a 400 with the part's `param`.
Decoding the bytes is the media kind's job (Pillow for images, the audio kind's decoders).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from floe.server.config import MediaConfig
from floe.server.errors import InvalidRequest


@dataclass(frozen=True)
class MediaBytes:
    data: bytes
    mime: str | None  # from the data URL or the response's Content-Type; None when unknown


def data_url(url: str, param: str, max_bytes: int) -> MediaBytes:
    """The bytes of a `data:<mime>;base64,<payload>` URL (400 on anything malformed or too big)."""
    meta, sep, payload = url.partition(",")
    if not sep or not meta.lower().endswith(";base64"):
        raise InvalidRequest(f"{param}: a data URL must be base64 (`data:<type>;base64,<data>`)",
                             param=param, code="invalid_media")
    if len(payload) > 4 * (max_bytes // 3 + 2):  # refuse before decoding a huge payload
        raise InvalidRequest(f"{param}: larger than {max_bytes} bytes", param=param, code="media_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{param}: the data URL is not valid base64", param=param,
                             code="invalid_media") from exc
    if len(data) > max_bytes:
        raise InvalidRequest(f"{param}: {len(data)} bytes; at most {max_bytes}", param=param,
                             code="media_too_large")
    return MediaBytes(data, meta[5:].split(";")[0].lower() or None)


def base64_payload(payload: str, param: str, max_bytes: int) -> bytes:
    """Plain base64 (e.g. `input_audio.data`), within `max_bytes`."""
    return data_url(f"data:application/octet-stream;base64,{payload}", param, max_bytes).data


def _check_address(host: str, port: int, param: str) -> str:
    """Resolve `host`; 400 unless every address is global. Returns the address to connect to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidRequest(f"{param}: cannot resolve {host!r}", param=param, code="media_fetch_failed") from exc
    addresses = {info[4][0] for info in infos}
    for address in addresses:
        if not ipaddress.ip_address(address.split("%")[0]).is_global:
            raise InvalidRequest(f"{param}: {host!r} resolves to a non-public address; media are never "
                                 "fetched from loopback or private networks", param=param,
                                 code="media_url_not_allowed")
    return sorted(addresses)[0]


def fetch(url: str, param: str, config: MediaConfig) -> MediaBytes:
    """Fetch an allowlisted http(s) URL (connection pinned to the checked address)."""
    import httpx

    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidRequest(f"{param}: media URLs must be data URLs or http(s)", param=param,
                             code="invalid_media")
    if host not in {d.lower() for d in config.allowed_domains}:
        raise InvalidRequest(f"{param}: remote media are not fetched from {host!r} (media.allowed_domains); "
                             "send the media inline as a data URL", param=param, code="media_url_not_allowed")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = _check_address(host, port, param)
    # NOTE: connect to the address just checked (no second DNS answer can point elsewhere),
    # keeping the host name for TLS (SNI, certificate) and the Host header.
    transport = httpx.HTTPTransport(retries=0)
    try:
        with httpx.Client(transport=transport, timeout=config.fetch_timeout_s, follow_redirects=False) as client:
            request = client.build_request("GET", url, extensions={"sni_hostname": host})
            request.url = request.url.copy_with(host=address)
            request.headers["Host"] = host if parts.port is None else f"{host}:{parts.port}"
            with client.send(request, stream=True) as response:
                if response.status_code != 200:
                    raise InvalidRequest(f"{param}: fetching the media gave HTTP {response.status_code}",
                                         param=param, code="media_fetch_failed")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > config.max_bytes:
                        raise InvalidRequest(f"{param}: larger than {config.max_bytes} bytes", param=param,
                                             code="media_too_large")
                mime = response.headers.get("content-type", "").split(";")[0].strip().lower() or None
                return MediaBytes(bytes(body), mime)
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"{param}: could not fetch the media ({type(exc).__name__})", param=param,
                             code="media_fetch_failed") from exc


def media_bytes(url: str, param: str, config: MediaConfig) -> MediaBytes:
    """A media part's URL (data or allowlisted http(s)) -> its bytes."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{param}: a media URL string is required", param=param, code="invalid_media")
    if url[:5].lower() == "data:":
        return data_url(url, param, config.max_bytes)
    return fetch(url, param, config)
