"""Limits kept in the memory of one process: exact within it, nothing to run beside it.

The same sliding logs as the Redis script, in deques: an entry is appended when a grant is
admitted and popped from the left once it is older than the window, so each admission costs
amortised O(1). Everything runs on one event loop without awaiting in between, which makes
each admission atomic with no lock. Parallel slots need no lease here: a process that dies
takes its slots with it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

from proxy.limits.backend import Decision, Grant
from proxy.limits.errors import Reason


class _Log:
    """The state of one key: when its requests came, what tokens they were charged, and the
    ids of the requests in flight."""

    __slots__ = ("amounts", "flight", "requests", "tokens", "total")

    def __init__(self) -> None:
        self.requests: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()  # (time, id); amounts[id] its charge
        self.amounts: dict[int, int] = {}
        self.total = 0
        self.flight: set[int] = set()

    def trim(self, edge: float) -> None:
        """Forget what happened at or before ``edge`` (it has left the window)."""
        while self.requests and self.requests[0] <= edge:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= edge:
            self.total -= self.amounts.pop(self.tokens.popleft()[1])

    def charge(self, now: float, entry: int, tokens: int) -> None:
        self.tokens.append((now, entry))
        self.amounts[entry] = tokens
        self.total += tokens

    def tokens_free_at(self, need: int) -> float | None:
        """When the charge whose leaving frees ``need`` tokens was made (oldest first leave);
        None if even an empty window would not free them."""
        freed = 0
        for at, entry in self.tokens:
            freed += self.amounts[entry]
            if freed >= need:
                return at
        return None


class MemoryBackend:
    """The default backend: per-process sliding logs, ``window`` seconds long."""

    lease: float | None = None
    local = True

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._logs: dict[str, _Log] = {}

    def _log(self, key: str, now: float) -> _Log:
        """The key's log as of ``now`` (what left the window forgotten), made if new."""
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = _Log()
        log.trim(now - self.window)
        return log

    async def admit(self, grant: Grant) -> Decision:
        now = self._clock()
        log = self._log(grant.key, now)
        limits = grant.limits
        rpm, tpm, parallel = limits.rpm, limits.tpm, limits.max_parallel
        requests, flight = log.requests, log.flight
        if (
            (rpm is not None and len(requests) >= rpm)
            or (tpm is not None and log.total + grant.tokens > tpm)
            or (parallel is not None and len(flight) >= parallel)
        ):
            return self._decision(log, grant, now, self._refusal(log, grant))
        # Admitted (the hot path, in one pass): ``_record`` and ``_decision``'s answer for an
        # admission, without their general cases (tests/test_limits.py holds the two to the
        # same answers).
        window = self.window
        reset_requests = reset_tokens = 0.0
        if rpm is not None:
            requests.append(now)
            reset_requests = requests[0] + window - now
            reset_requests = reset_requests if reset_requests > 0.0 else 0.0
        if tpm is not None:
            log.charge(now, grant.id, grant.tokens)
            at: float | None
            at, oldest = log.tokens[0]
            if log.amounts[oldest] < 1:  # settled at 0: the first charge that frees a token
                at = log.tokens_free_at(1)
            if at is not None:
                reset_tokens = at + window - now
                reset_tokens = reset_tokens if reset_tokens > 0.0 else 0.0
        if parallel is not None:
            flight.add(grant.id)
        # admitted, refused_by, requests, tokens, parallel, reset_requests, reset_tokens
        return Decision(
            True, None, len(requests), log.total, len(flight), reset_requests, reset_tokens
        )

    def _refusal(self, log: _Log, grant: Grant) -> Reason | None:
        limits = grant.limits
        if limits.rpm is not None and len(log.requests) >= limits.rpm:
            return "requests"
        if limits.tpm is not None and log.total + grant.tokens > limits.tpm:
            return "tokens"
        if limits.max_parallel is not None and len(log.flight) >= limits.max_parallel:
            return "parallel"
        return None

    def _record(self, log: _Log, grant: Grant, now: float) -> None:
        limits = grant.limits
        if limits.rpm is not None:
            log.requests.append(now)
        if limits.tpm is not None:
            log.charge(now, grant.id, grant.tokens)
        if limits.max_parallel is not None:
            log.flight.add(grant.id)

    def _decision(self, log: _Log, grant: Grant, now: float, refused: Reason | None) -> Decision:
        reset_requests = reset_tokens = 0.0
        if grant.limits.rpm is not None:
            at = self._blocking_request(log, grant.limits.rpm, refused)
            reset_requests = self._free_in(at, now, refused)
        if grant.limits.tpm is not None:
            need = log.total + grant.tokens - grant.limits.tpm if refused == "tokens" else 1
            reset_tokens = self._free_in(log.tokens_free_at(need), now, refused)
        waits = {"requests": reset_requests, "tokens": reset_tokens, "parallel": 1.0}
        return Decision(
            admitted=refused is None,
            refused_by=refused,
            requests=len(log.requests),
            tokens=log.total,
            parallel=len(log.flight),
            reset_requests=reset_requests,
            reset_tokens=reset_tokens,
            retry_after=waits[refused] if refused else 0.0,
        )

    @staticmethod
    def _blocking_request(log: _Log, rpm: int, refused: Reason | None) -> float | None:
        """When the request whose leaving lets one more in was made (refused), else the oldest."""
        if not log.requests or rpm == 0:
            return None
        return log.requests[max(0, len(log.requests) - rpm) if refused == "requests" else 0]

    def _free_in(self, at: float | None, now: float, refused: Reason | None) -> float:
        """Seconds until the entry made ``at`` leaves the window. No such entry: nothing to
        wait for, unless refused (a limit of 0): then a whole window, a polite 'not soon'."""
        if at is None:
            return self.window if refused else 0.0
        return max(0.0, at + self.window - now)

    async def settle(self, grant: Grant, used_tokens: int | None) -> None:
        log = self._logs.get(grant.key)
        if log is None:
            return
        log.flight.discard(grant.id)
        if used_tokens is None or grant.limits.tpm is None:
            return
        now = self._clock()
        log.trim(now - self.window)  # an expired reservation must not be "replaced"
        if grant.id in log.amounts:  # still in the window: replace the reservation
            log.total += used_tokens - log.amounts[grant.id]
            log.amounts[grant.id] = used_tokens
        elif used_tokens > grant.tokens:  # it left the window already: charge the overrun now
            log.charge(now, ~grant.id, used_tokens - grant.tokens)  # ~: no grant's id

    async def renew(self, grants: Sequence[Grant]) -> None:
        """Nothing to renew: slots here live until settled."""

    async def ping(self) -> None:
        """Always able to answer."""

    async def aclose(self) -> None:
        self._logs.clear()
