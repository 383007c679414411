"""Client keys: who is calling, which models it may use, and its limits.

Keys come from ``keys`` (named, each with an optional model allowlist and ``rpm``, ``tpm``,
``max_parallel``; ``key`` or ``key_sha256``) and from the older ``api_keys`` (unnamed, unlimited:
named ``api_keys[0]``, ``api_keys[1]``... in logs). With no key configured at all, everyone is
let in, as ``-``.

A client sends its key as ``Authorization: Bearer <key>`` (OpenAI's SDKs) or ``x-api-key:
<key>`` (Anthropic's). It is compared in constant time: every configured key's SHA-256 digest
against the given key's, with no early exit, so the time taken says nothing about how much of a
key matched, nor which key it was. Only digests are kept; the key never appears in a log line,
a metric or a response: its name does.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from proxy.asgi import Scope, header
from proxy.errors import AuthenticationFailed, PermissionDenied
from proxy.limits import KeyLimits
from proxy.settings import Settings


@dataclass(frozen=True, slots=True)
class Key:
    """A client key as the proxy knows it: its name, allowlist and limits."""

    name: str
    models: frozenset[str] | None  # None: every model
    limits: KeyLimits

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def check(self, model: str) -> None:
        """Raise 403 unless this key may use ``model`` (before anything is counted)."""
        if not self.may_use(model):
            raise PermissionDenied(
                f"The key '{self.name}' may not use the model `{model}`.", param="model"
            )


ANONYMOUS = Key("-", None, KeyLimits())


class Keyring:
    """The configured keys; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self._keys: list[tuple[bytes, Key]] = [
            (_digest(secret.encode()), Key(f"api_keys[{index}]", None, KeyLimits()))
            for index, secret in enumerate(settings.api_keys)
        ]
        for config in settings.keys:
            digest = (
                bytes.fromhex(config.key_sha256)
                if config.key_sha256
                else _digest((config.key or "").encode())
            )
            models = frozenset(config.models) if config.models is not None else None
            limits = KeyLimits(config.rpm, config.tpm, config.max_parallel)
            self._keys.append((digest, Key(config.name, models, limits)))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, scope: Scope) -> Key:
        """The caller's key (``ANONYMOUS`` when no keys are configured); raises 401."""
        if not self._keys:
            return ANONYMOUS
        given = _given(scope)
        if not given:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
                "(or 'x-api-key: <key>')."
            )
        digest = _digest(given)
        found: Key | None = None
        for expected, key in self._keys:  # every key compared: no early exit
            if hmac.compare_digest(digest, expected) and found is None:
                found = key
        if found is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return found

    def visible(self, key: Key, models: Iterable[str]) -> list[str]:
        """The models ``key`` may use (GET /v1/models lists only those)."""
        return [model for model in models if key.may_use(model)]


def _given(scope: Scope) -> bytes:
    authorization = header(scope, b"authorization") or b""
    scheme, _, value = authorization.partition(b" ")
    if scheme.lower() == b"bearer" and value.strip():
        return value.strip()
    return (header(scope, b"x-api-key") or b"").strip()


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()
