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
    return encoded_duration(seconds).decode()


def encoded_duration(seconds: float) -> bytes:
    """``duration`` as a header carries it. Made twice on every admitted request, so as bytes
    (formatting bytes costs half what formatting text does), with the usual cases first: under
    a second (a full window, its oldest entry about to leave) and within a minute."""
    if seconds < 1:
        return b"%dms" % max(1, round(seconds * 1000)) if seconds > 0 else b"0s"
    if seconds >= _HUGE:
        return _huge(seconds)
    # round(seconds, 3) in whole milliseconds. It rounds the float's exact value, which takes
    # a decimal conversion (about a microsecond); rounding the product gives the same number
    # except where the product's own rounding (under 1e-11 for a reset shorter than a day) may
    # have crossed a half: there, and only there, the exact way decides.
    scaled = seconds * 1000
    millis = int(scaled + 0.5)
    if abs(scaled + 0.5 - millis) < 1e-6:
        millis = round(round(seconds, 3) * 1000)
    if millis < 60_000:  # no minutes to split off
        whole, part = divmod(millis, 1000)
        if part % 10:  # three digits, no zero to strip
            return b"%d.%03ds" % (whole, part)
        return _seconds(millis)
    whole_minutes, rest = divmod(millis, 60_000)
    hours, minutes = divmod(whole_minutes, 60)
    if hours:
        return b"%dh%dm%s" % (hours, minutes, _seconds(rest))
    return b"%dm%s" % (minutes, _seconds(rest)) if minutes else _seconds(rest)


_HUGE = 2.0**32  # seconds (136 years): past it the product no longer holds the half-millisecond


def _huge(seconds: float) -> bytes:
    """``encoded_duration`` the general way, in floats: for no reset a window gives, but
    the function answers every float as it always did."""
    whole_minutes, rest = divmod(round(seconds, 3), 60)
    hours, minutes = divmod(int(whole_minutes), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return (f"{hours}h{minutes}m{text}" if hours else f"{minutes}m{text}").encode()


def _seconds(millis: int) -> bytes:
    """``1200`` -> ``1.2s``, ``5000`` -> ``5s``: milliseconds at most, no trailing zeros."""
    whole, part = divmod(millis, 1000)
    if not part:
        return b"%ds" % whole
    return (b"%d.%03d" % (whole, part)).rstrip(b"0") + b"s"


def retry_after(seconds: float) -> str:
    """``Retry-After`` in whole seconds, rounded up and at least 1 (0 would invite a spin)."""
    return str(max(1, math.ceil(seconds)))


def ratelimit_headers(limits: KeyLimits, decision: Decision) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the configured limits.

    ``reset`` is when the oldest entry leaves the window (so ``remaining`` grows again); on a
    refusal it is when the refused request would fit.
    """
    return {name.decode(): value.decode() for name, value in raw_headers(limits, decision)}


def raw_headers(limits: KeyLimits, decision: Decision) -> list[tuple[bytes, bytes]]:
    """``ratelimit_headers`` as the ASGI response start carries them (made on every admitted
    request, so written out rather than looped)."""
    headers: list[tuple[bytes, bytes]] = []
    rpm, tpm = limits.rpm, limits.tpm
    if rpm is not None:
        headers.append((b"x-ratelimit-limit-requests", b"%d" % rpm))
        headers.append((b"x-ratelimit-remaining-requests", b"%d" % max(0, rpm - decision.requests)))
        headers.append((b"x-ratelimit-reset-requests", encoded_duration(decision.reset_requests)))
    if tpm is not None:
        headers.append((b"x-ratelimit-limit-tokens", b"%d" % tpm))
        headers.append((b"x-ratelimit-remaining-tokens", b"%d" % max(0, tpm - decision.tokens)))
        headers.append((b"x-ratelimit-reset-tokens", encoded_duration(decision.reset_tokens)))
    return headers
