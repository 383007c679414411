"""Keeping secrets out of what the proxy says.

Anything the proxy builds from upstream data and hands to a client (an error's message, type,
param and code, a header such as ``Retry-After``) passes through ``Scrubber.error`` at one
boundary: where the HTTP upstream layer turns what it received into a ``ProxyError``. Logged
request bodies pass through ``Scrubber.text``. An upstream may echo its key anywhere (as
``param``, in a header, in an in-stream error), so every field is scrubbed, not only the
message, and both the configured secrets (whatever their shape) and anything shaped like a key
are replaced.

The answer itself (content, tool calls) is not scrubbed: it is the model's output, and the
proxy never sends the upstream a key inside a prompt.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.errors import ProxyError

MASK = "***"
_SHAPED = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9._\-~+/=]{6,})", re.IGNORECASE)
# Header names whose configured values are credentials (Authorization, api-key, x-api-key...).
_CREDENTIAL_HEADER = re.compile(r"auth|key|token|secret|cookie", re.IGNORECASE)


class Scrubber:
    """Replaces the given secrets, and anything shaped like a key, with ``***``."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        unique = {secret for secret in secrets if secret and len(secret) >= 4}
        self.secrets = sorted(unique, key=len, reverse=True)

    def text(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return _SHAPED.sub(MASK, text)

    def optional(self, text: str | None) -> str | None:
        return None if text is None else self.text(text)

    def error(self, error: ProxyError) -> ProxyError:
        """``error`` with every field and header value scrubbed (in place; returned)."""
        error.message = self.text(error.message)
        error.type = self.text(error.type)
        error.param = self.optional(error.param)
        error.code = self.optional(error.code)
        error.headers = {name: self.text(value) for name, value in error.headers.items()}
        error.args = (error.message,)
        return error


def credential_headers(headers: dict[str, str]) -> list[str]:
    """The values of configured headers that carry credentials (to be scrubbed too)."""
    return [value for name, value in headers.items() if _CREDENTIAL_HEADER.search(name)]
