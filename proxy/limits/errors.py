"""The errors of admission.

The client-facing ones live in the proxy's one exception tree (``proxy.errors``): ``RateLimited``
(429 ``requests`` | ``tokens``, code ``rate_limit_exceeded``) and ``LimitsUnavailable`` (503,
``on_backend_error: deny``), both carrying their headers (``Retry-After``, ``x-ratelimit-*``).
The internal ones are here:

    BackendUnavailable       the backend could not answer (timeout, refused); the Limiter
    └── BreakerOpen          turns it into LimitsUnavailable or a miss. BreakerOpen: not
                             tried, it failed moments ago.
"""

from __future__ import annotations

from typing import Literal

from proxy.errors import LimitsUnavailable, RateLimited

Reason = Literal["requests", "tokens", "parallel"]

__all__ = ["BackendUnavailable", "BreakerOpen", "LimitsUnavailable", "RateLimited", "Reason"]


class BackendUnavailable(Exception):
    """The backend did not answer in time, refused the connection, or its breaker is open.

    Raised by backends at their one boundary with the store (every foreign exception is
    translated there) and by the breaker; never shown to a client as such (its text may name
    an internal host).
    """


class BreakerOpen(BackendUnavailable):
    """Not even tried: the backend failed moments ago (logged then, not on every request)."""
