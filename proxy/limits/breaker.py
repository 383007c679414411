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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run the body if the breaker lets it; record how it went.

        Raises ``BreakerOpen`` at once when open (or when another call is probing).
        A probe that ends otherwise (cancelled with its request) gives its turn back.
        """
        probe = self._enter()
        try:
            yield
        except BackendUnavailable:
            self._opened_at = self._clock()
            self._probing = False
            raise
        except BaseException:
            if probe:
                self._probing = False
            raise
        if probe:  # a straggler's success, begun before a failure, proves nothing
            self._opened_at = None
            self._probing = False

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
