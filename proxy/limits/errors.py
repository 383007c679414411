"""The errors of admission, in the proxy's exception tree.

    ProxyError (proxy.errors)
    ├── RateLimited          429 requests | tokens, code rate_limit_exceeded
    └── LimitsUnavailable    503 server_error, code limits_unavailable (on_backend_error: deny)

    BackendUnavailable       internal: the backend could not answer (timeout, refused); the
    └── BreakerOpen          Limiter turns it into LimitsUnavailable or a miss. BreakerOpen:
                             not tried, it failed moments ago.

Both client-facing errors carry their response headers (``Retry-After``, ``x-ratelimit-*``).
"""

from __future__ import annotations

from typing import Literal

from proxy.errors import ProxyError

Reason = Literal["requests", "tokens", "parallel"]


class RateLimited(ProxyError):
    """A key is over one of its limits; ``reason`` says which (for metrics).

    OpenAI puts the kind of limit in ``type``: ``requests`` or ``tokens``. A request refused for
    ``max_parallel`` has type ``requests`` (OpenAI has no such limit; it is one on requests).
    """

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, key: str, reason: Reason, retry_after: float, headers: dict[str, str]
    ) -> None:
        kind = "tokens" if reason == "tokens" else "requests"
        super().__init__(message, type=kind, headers=headers)
        self.key = key
        self.reason: Reason = reason
        self.retry_after = retry_after


class LimitsUnavailable(ProxyError):
    """The limits' backend cannot answer and ``on_backend_error`` is ``deny``."""

    status = 503
    type = "server_error"
    code = "limits_unavailable"


class BackendUnavailable(Exception):
    """The backend did not answer in time, refused the connection, or its breaker is open.

    Raised by backends at their one boundary with the store (every foreign exception is
    translated there) and by the breaker; never shown to a client as such (its text may name
    an internal host).
    """


class BreakerOpen(BackendUnavailable):
    """Not even tried: the backend failed moments ago (logged then, not on every request)."""
