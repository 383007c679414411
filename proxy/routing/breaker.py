"""A deployment's circuit breaker: rest after repeated failures, then let one probe through.

``failures`` failed attempts in a row (of the kinds routing retries: the deployment's
health, not the client's request) open it for ``seconds``; no traffic goes there meanwhile.
Then exactly one request probes it (half-open) while the others skip it; the probe's success
closes it, its failure opens it again. State lives in the process (README: what workers
share).
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    __slots__ = (
        "_clock",
        "_on_change",
        "failures",
        "opened_at",
        "probing",
        "seconds",
        "state",
        "streak",
    )

    def __init__(
        self,
        failures: int,
        seconds: float,
        on_change: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.seconds = seconds
        self.state = CLOSED
        self.streak = 0  # failures in a row
        self.opened_at = 0.0
        self.probing = False  # a half-open probe is out
        self._on_change = on_change
        self._clock = clock

    def allows(self) -> bool:
        """May an attempt go there now? (Does not claim the probe: see ``claim``.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return self._clock() - self.opened_at >= self.seconds
        return not self.probing

    def claim(self) -> None:
        """An attempt goes there: after the rest, it is the one probe."""
        if self.state == OPEN and self._clock() - self.opened_at >= self.seconds:
            self._change(HALF_OPEN)
        if self.state == HALF_OPEN:
            self.probing = True

    def succeeded(self) -> None:
        self.streak = 0
        self.probing = False
        if self.state != CLOSED:
            self._change(CLOSED)

    def failed(self) -> None:
        self.streak += 1
        self.probing = False
        if self.state == HALF_OPEN or (self.state == CLOSED and self.streak >= self.failures):
            self.opened_at = self._clock()
            self._change(OPEN)

    def released(self) -> None:
        """An attempt ended without saying anything about the deployment's health (a client
        that left, a 4xx of its own): a probe is free to go again."""
        self.probing = False

    def _change(self, state: str) -> None:
        self.state = state
        if self._on_change is not None:
            self._on_change(state)
