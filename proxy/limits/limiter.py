"""The facade the proxy calls: admit a request under its key's limits, settle it at the end.

    ticket = await limiter.admit(key.name, key.limits, tokens=reservation)  # may raise
    try:
        ...serve, adding ticket.headers to the response...
    finally:
        await ticket.settle(usage.prompt_tokens + usage.completion_tokens)  # or None

``admit`` raises ``RateLimited`` (429) when a limit is reached, or ``LimitsUnavailable`` (503)
when the backend cannot answer and ``on_backend_error`` is ``deny``; with ``allow`` it returns
a ticket that records nothing and counts a miss. Every ticket must be settled once, in a
``finally``: on every way a request ends (completion, error, disconnect, shutdown, timeout).

What counts: an admitted request counts against ``rpm`` whatever happens next (an upstream 4xx
included: it took its turn). Its tokens are the reservation until it settles: ``settle(n)``
charges the ``n`` the upstream reported instead, ``settle(None)`` (usage unknown, e.g. a
stream cut short) keeps the reservation, and ``release()`` charges nothing, for a request
that ended before any tokens could be generated (it never reached the upstream, or the
upstream refused it).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Literal

from proxy.limits.backend import Backend, Decision, Grant
from proxy.limits.breaker import Breaker, State
from proxy.limits.errors import BackendUnavailable, BreakerOpen, LimitsUnavailable, RateLimited
from proxy.limits.headers import duration, ratelimit_headers, raw_headers, retry_after
from proxy.limits.heartbeat import Heartbeat
from proxy.limits.memory import MemoryBackend
from proxy.limits.policy import KeyLimits

logger = logging.getLogger(__name__)

OnBackendError = Literal["deny", "allow"]


class Ticket:
    """An admitted request: its headers go on the response (``raw_headers``, or ``headers``
    as a dict); ``settle`` ends it.

    A ticket of an unlimited key, or one admitted while the backend was down with
    ``on_backend_error: allow``, has no grant: it records nothing, and settling it is free.
    """

    __slots__ = ("_decision", "_grant", "_limiter", "_settled", "key")

    def __init__(
        self,
        key: str,
        limiter: Limiter | None = None,
        grant: Grant | None = None,
        decision: Decision | None = None,
    ) -> None:
        self.key = key
        self._limiter = limiter
        self._grant = grant
        self._decision = decision
        self._settled = False

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The ``x-ratelimit-*`` headers, as the response's start carries them."""
        if self._grant is None or self._decision is None:
            return []
        return raw_headers(self._grant.limits, self._decision)

    @property
    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers by name."""
        if self._grant is None or self._decision is None:
            return {}
        return ratelimit_headers(self._grant.limits, self._decision)

    async def settle(self, used_tokens: int | None = None) -> None:
        """The answer ended: charge ``used_tokens`` (prompt + completion as the upstream
        reported; None keeps the reservation) and free the parallel slot.

        Idempotent, never raises, bounded by the backend's timeout; if the backend cannot
        answer, the slot expires with its lease and the reservation stays charged.
        """
        if self._settled:
            return
        self._settled = True
        limiter, grant = self._limiter, self._grant
        if limiter is not None and grant is not None:
            used = None if used_tokens is None else max(0, used_tokens)
            if limiter._memory is not None:  # no heartbeat, no breaker, nothing to wait for
                limiter._memory.settle_now(grant, used)
            else:
                await limiter._settle(grant, used)

    async def release(self) -> None:
        """End a request that produced no tokens: refund the reservation, free the slot."""
        await self.settle(0)


class Limiter:
    """Per-key limits over one backend (``MemoryBackend`` unless told otherwise)."""

    def __init__(
        self,
        backend: Backend | None = None,
        on_backend_error: OnBackendError = "deny",
        *,
        breaker: Breaker | None = None,
    ) -> None:
        if on_backend_error not in ("deny", "allow"):
            raise ValueError(f"on_backend_error must be deny or allow, not {on_backend_error!r}")
        self.backend: Backend = backend if backend is not None else MemoryBackend()
        self.on_backend_error = on_backend_error
        self.breaker = breaker if breaker is not None else Breaker()
        self.misses = 0  # admissions let through unchecked (allow, backend down)
        self._numbers = itertools.count()
        # The memory backend is called directly, each way: it cannot be down (no breaker) and
        # nothing in it waits (no coroutine).
        self._memory = self.backend if isinstance(self.backend, MemoryBackend) else None
        lease = self.backend.lease
        self._heartbeat = Heartbeat(self._renew, lease / 3) if lease else None

    @property
    def state(self) -> State:
        """The breaker's state, for the metrics: closed, open or half_open."""
        return self.breaker.state

    async def admit(self, key: str, limits: KeyLimits, tokens: int) -> Ticket:
        """Admit one request of the key named ``key`` reserving ``tokens`` (clamped to
        ``[1, tpm]``, see ``KeyLimits.reservation``), or raise ``RateLimited`` /
        ``LimitsUnavailable``."""
        if limits.unlimited:
            return Ticket(key)
        grant = Grant(key, limits, limits.reservation(tokens), next(self._numbers))
        if self._memory is not None:
            decision = self._memory.admit_now(grant)
        else:
            try:
                with self.breaker.guard():
                    decision = await self.backend.admit(grant)
            except BackendUnavailable as exc:
                return self._unavailable(key, exc)
        if not decision.admitted:
            raise _rate_limited(grant, decision)
        if self._heartbeat is not None and limits.max_parallel is not None:
            self._heartbeat.add(grant)
        return Ticket(key, self, grant, decision)

    def _unavailable(self, key: str, exc: BackendUnavailable) -> Ticket:
        """A miss (allow) or a 503 (deny). Logged when the backend failed, not on every
        request the open breaker turns away (an outage would flood the log)."""
        if not isinstance(exc, BreakerOpen):
            logger.warning(
                "limits backend unavailable (key %s, %s): %s", key, self.on_backend_error, exc
            )
        if self.on_backend_error == "allow":
            self.misses += 1
            return Ticket(key)
        message = (
            "Rate limits cannot be checked right now (their backend is unavailable); "
            "please retry shortly."
        )
        wait = retry_after(max(self.breaker.retry_in, 1.0))
        raise LimitsUnavailable(message, headers={"Retry-After": wait}) from exc

    async def _settle(self, grant: Grant, used_tokens: int | None) -> None:
        if self._heartbeat is not None:
            self._heartbeat.discard(grant)
        try:
            with self.breaker.guard():
                await self.backend.settle(grant, used_tokens)
        except BackendUnavailable as exc:  # its slot expires with the lease, its reservation stays
            level = logging.DEBUG if isinstance(exc, BreakerOpen) else logging.WARNING
            logger.log(level, "could not settle a request of key %s: %s", grant.key, exc)

    async def _renew(self, grants: Sequence[Grant]) -> None:
        with self.breaker.guard():
            await self.backend.renew(grants)

    async def ready(self) -> bool:
        """Can the backend answer now? (False while the breaker is open: /readyz.)"""
        try:
            with self.breaker.guard():
                await self.backend.ping()
        except BackendUnavailable:
            return False
        return True

    async def aclose(self) -> None:
        """Stop the heartbeat and close the backend. Unsettled slots expire with their lease."""
        if self._heartbeat is not None:
            await self._heartbeat.aclose()
        await self.backend.aclose()


def _rate_limited(grant: Grant, decision: Decision) -> RateLimited:
    """The 429 for a refused grant, worded like OpenAI's."""
    limits, reason = grant.limits, decision.refused_by or "requests"
    if reason == "requests":
        what, limit, used, asked = "requests per min (RPM)", limits.rpm, decision.requests, 1
    elif reason == "tokens":
        what, limit, used, asked = "tokens per min (TPM)", limits.tpm, decision.tokens, grant.tokens
    else:
        what, limit, used, asked = "parallel requests", limits.max_parallel, decision.parallel, 1
    message = (
        f"Rate limit reached for key {grant.key!r} on {what}: Limit {limit}, Used {used}, "
        f"Requested {asked}. Please try again in {duration(decision.retry_after)}."
    )
    headers = ratelimit_headers(limits, decision)
    headers["Retry-After"] = retry_after(decision.retry_after)
    return RateLimited(
        message, key=grant.key, reason=reason, retry_after=decision.retry_after, headers=headers
    )
