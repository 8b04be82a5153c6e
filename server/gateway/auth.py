"""API keys (`Authorization: Bearer ...`) and the separate admin key."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from floe.server.config import AuthConfig
from floe.server.errors import AuthenticationFailed, PermissionDenied

# Browsers cannot set headers on a websocket: OpenAI's browser SDK offers the key as this
# subprotocol, beside `realtime`.
WS_KEY_PROTOCOL = "openai-insecure-api-key."


class KeyChecker:
    def __init__(self, auth: AuthConfig) -> None:
        self._keys = [k.get_secret_value().encode() for k in auth.api_keys]
        self._admin = auth.admin_key.get_secret_value().encode() if auth.admin_key else None

    @staticmethod
    def _bearer(request: HTTPConnection) -> bytes | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip().encode()
        if request.scope.get("type") == "websocket":
            for protocol in request.scope.get("subprotocols", ()):
                if protocol.startswith(WS_KEY_PROTOCOL) and protocol[len(WS_KEY_PROTOCOL):]:
                    return protocol[len(WS_KEY_PROTOCOL):].encode()
        return None

    @staticmethod
    def ws_subprotocol(websocket: HTTPConnection) -> str | None:
        """The subprotocol a websocket accepts: `realtime` when offered (a browser that sends its key
        as a subprotocol fails any handshake that chooses none)."""
        return "realtime" if "realtime" in websocket.scope.get("subprotocols", ()) else None

    @staticmethod
    def _matches(token: bytes, keys: list[bytes]) -> bool:
        # NOTE: compare against every key, so timing does not reveal which one was close.
        found = False
        for key in keys:
            found |= hmac.compare_digest(token, key)
        return found

    def check_api(self, request: HTTPConnection) -> None:
        """Inference routes (a websocket's handshake too): any API key, or the admin key; open when
        no keys are configured."""
        if not self._keys and self._admin is None:
            return
        if not self._keys and self._admin is not None:
            return  # only administration is protected
        token = self._bearer(request)
        allowed = self._keys + ([self._admin] if self._admin else [])
        if token is None or not self._matches(token, allowed):
            raise AuthenticationFailed("Incorrect or missing API key. Send `Authorization: Bearer <key>`.")

    def check_admin(self, request: HTTPConnection) -> None:
        """Adapter administration: the admin key when one is set, else the API keys."""
        token = self._bearer(request)
        if self._admin is not None:
            if token is None:
                raise AuthenticationFailed("The adapter API needs the admin key as a Bearer token.")
            if not self._matches(token, [self._admin]):
                if self._matches(token, self._keys):
                    raise PermissionDenied("This key may not manage adapters; use the admin key.")
                raise AuthenticationFailed("Incorrect admin key.")
            return
        self.check_api(request)
