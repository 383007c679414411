"""A circuit breaker in front of the limits' backend: fail fast while it is down.

Without it, every request would wait the whole timeout (1 s) for a Redis that is gone. One
failure opens the breaker; while open, calls fail at once; after ``cooldown`` seconds exactly
one call probes (half-open) while the others still fail fast; its success closes the breaker,
its failure opens it for another ``cooldown``. So once Redis is back, calls succeed again
within ``cooldown`` + one timeout (3 s + 1 s by default), and /readyz, which probes too,
follows the same states.

    closed --failure--> open --cooldown--> half_open --success--> closed
                          ^                    |
                          +------failure-------+
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal

from proxy.limits.errors import BackendUnavailable, BreakerOpen

State = Literal["closed", "open", "half_open"]


class Breaker:
    """Guards calls to one backend; ``state`` is what the metrics show."""

    def __init__(self, cooldown: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self._clock = clock
        self._opened_at: float | None = None  # None: closed
        self._probing = False

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._probing or self.retry_in == 0 else "open"

    @property
    def retry_in(self) -> float:
        """Seconds until a call may probe again (0 when closed or due)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown - self._clock())

    def guard(self) -> Guard:
        """A context for one call: runs the body if the breaker lets it, records how it went.

        Raises ``BreakerOpen`` at once when open (or when another call is probing).
        A probe that ends otherwise (cancelled with its request) gives its turn back.
        """
        return Guard(self)

    def _enter(self) -> bool:
        """True if this call is the probe; raises if the call may not go at all."""
        if self._opened_at is None:
            return False
        if self._probing or self.retry_in > 0:
            raise BreakerOpen(
                f"the limits backend failed recently; next try in {self.retry_in:.1f} s"
            )
        self._probing = True
        return True


class Guard:
    """One call through a ``Breaker`` (a class, not a generator: it runs twice per request)."""

    __slots__ = ("_breaker", "_probe")

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker
        self._probe = False

    def __enter__(self) -> None:
        self._probe = self._breaker._enter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        breaker = self._breaker
        if kind is not None and issubclass(kind, BackendUnavailable):
            breaker._opened_at = breaker._clock()
            breaker._probing = False
        elif self._probe:
            # failed otherwise: the probe's turn is given back; succeeded: closed again (a
            # straggler's success, begun before a failure, is no probe and proves nothing)
            breaker._probing = False
            if kind is None:
                breaker._opened_at = None
