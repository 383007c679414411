"""Client authentication against the configured ``api_keys``."""

from __future__ import annotations

import hmac

from proxy.asgi import Scope, header
from proxy.errors import AuthenticationFailed


class Authenticator:
    """Checks ``Authorization: Bearer <key>``; with no keys configured everyone is let in."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    def check(self, scope: Scope) -> None:
        if not self._keys:
            return
        value = header(scope, b"authorization") or b""
        scheme, _, given = value.partition(b" ")
        if scheme.lower() != b"bearer" or not given:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            )
        # compare_digest on every key, with no early exit: the time taken says nothing about
        # how much of a key matched, nor which key it was.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given.strip(), key)
        if not matched:
            raise AuthenticationFailed("Incorrect API key provided.")
