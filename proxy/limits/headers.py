"""OpenAI's rate-limit headers and its duration format (``1s``, ``6m0s``, ``120ms``).

OpenAI formats durations like Go's ``time.Duration``: clients (and people) read them, so we
do the same rather than send plain seconds.
"""

from __future__ import annotations

import math

from proxy.limits.backend import Decision
from proxy.limits.policy import KeyLimits


def duration(seconds: float) -> str:
    """``0.12`` -> ``120ms``, ``1.2`` -> ``1.2s``, ``360`` -> ``6m0s``, ``3725`` -> ``1h2m5s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    rounded = round(seconds, 3)
    if rounded < 60:  # the usual case (a window of 60 s): no minutes to split off
        return _seconds(rounded)
    whole_minutes, rest = divmod(rounded, 60)
    hours, minutes = divmod(int(whole_minutes), 60)
    text = _seconds(rest)
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def _seconds(value: float) -> str:
    """``1.2`` -> ``1.2s``, ``5.0`` -> ``5s``: milliseconds at most, no trailing zeros."""
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def retry_after(seconds: float) -> str:
    """``Retry-After`` in whole seconds, rounded up and at least 1 (0 would invite a spin)."""
    return str(max(1, math.ceil(seconds)))


def ratelimit_headers(limits: KeyLimits, decision: Decision) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the configured limits.

    ``reset`` is when the oldest entry leaves the window (so ``remaining`` grows again); on a
    refusal it is when the refused request would fit.
    """
    return {name.decode(): value.decode() for name, value in raw_headers(limits, decision)}


_REQUESTS = (
    b"x-ratelimit-limit-requests",
    b"x-ratelimit-remaining-requests",
    b"x-ratelimit-reset-requests",
)
_TOKENS = (
    b"x-ratelimit-limit-tokens",
    b"x-ratelimit-remaining-tokens",
    b"x-ratelimit-reset-tokens",
)


def raw_headers(limits: KeyLimits, decision: Decision) -> list[tuple[bytes, bytes]]:
    """``ratelimit_headers`` as the ASGI response start carries them (made on every admitted
    request: its names encoded once, here)."""
    headers: list[tuple[bytes, bytes]] = []
    for limit, used, reset, names in (
        (limits.rpm, decision.requests, decision.reset_requests, _REQUESTS),
        (limits.tpm, decision.tokens, decision.reset_tokens, _TOKENS),
    ):
        if limit is not None:
            headers.append((names[0], b"%d" % limit))
            headers.append((names[1], b"%d" % max(0, limit - used)))
            headers.append((names[2], duration(reset).encode()))
    return headers
