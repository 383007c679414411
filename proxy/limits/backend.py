"""The seam between the Limiter and where the counts live.

A backend answers one question atomically: may this grant be admitted under these limits,
counted together with every other process sharing the backend? ``MemoryBackend`` answers it
for one process; ``RedisBackend`` for every process and replica sharing a Redis. Backends
translate every failure of their store into ``BackendUnavailable`` and never retry on their
own: the Limiter's breaker and ``on_backend_error`` decide what a failure means.

Who owns what: the Limiter creates a ``Grant`` per admission and hands the same object back
to ``settle``; a backend serves one Limiter, which closes it; a backend whose parallel slots
are leases (``lease`` is not None) relies on the Limiter's heartbeat to ``renew`` the slots of
the grants still running.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.limits.errors import Reason
from proxy.limits.policy import KeyLimits


class Ids:
    """Names for grants in a store shared by processes and machines: 64 random bits drawn once
    per process (each backend draws its own, and a forked child draws again), then the grant's
    number, instead of eight fresh random bytes (a system call) on every admission. Only a
    shared backend needs them, and it pays for the fork check on a round trip anyway."""

    __slots__ = ("_pid", "_prefix")

    def __init__(self) -> None:
        self._draw()

    def _draw(self) -> None:
        self._pid = os.getpid()
        self._prefix = os.urandom(8).hex() + "-"

    def __call__(self, number: int) -> str:
        if os.getpid() != self._pid:  # a fork after the app was built: not the parent's ids
            self._draw()
        return f"{self._prefix}{number:x}"


# Grant and Decision are made on every admission: read-only by convention, not frozen (a frozen
# dataclass's __init__ sets each field through object.__setattr__, five times the cost).
@dataclass(slots=True)
class Grant:
    """One admission asked for: the key's name (never its secret), its limits, the tokens
    reserved up front, and its number, unique among its Limiter's grants (a shared backend
    names its entries with ``Ids``, which makes them unique across processes too)."""

    key: str
    limits: KeyLimits
    tokens: int
    id: int


@dataclass(slots=True)
class Decision:
    """A backend's answer; counts include the grant when it was admitted.

    Times are seconds from now: ``reset_*`` until the oldest entry leaves the window (on a
    refusal, until the refused grant would fit), ``retry_after`` on a refusal.
    """

    admitted: bool
    refused_by: Reason | None = None
    requests: int = 0
    tokens: int = 0
    parallel: int = 0
    reset_requests: float = 0.0
    reset_tokens: float = 0.0
    retry_after: float = 0.0


class Backend(Protocol):
    """Where the sliding logs and the parallel slots live."""

    #: Seconds a parallel slot survives without renewal, or None when slots live until settled
    #: (a backend whose holder cannot crash without it: the memory of the process itself).
    lease: float | None

    async def admit(self, grant: Grant) -> Decision:
        """Check the three limits and, if all hold, record the grant, in one atomic step."""
        ...

    async def settle(self, grant: Grant, used_tokens: int | None) -> None:
        """Replace the reservation by ``used_tokens`` (None: keep it); free the slot."""
        ...

    async def renew(self, grants: Sequence[Grant]) -> None:
        """Extend the leases of running grants' slots (one round trip for all)."""
        ...

    async def ping(self) -> None:
        """Return if the backend can answer now; raise ``BackendUnavailable`` otherwise."""
        ...

    async def aclose(self) -> None:
        """Release connections; the backend is not used afterwards."""
        ...
