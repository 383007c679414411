"""Limits kept in the memory of one process: exact within it, nothing to run beside it.

The same sliding logs as the Redis script: an entry is appended when a grant is admitted and
dropped from the front once it is older than the window, so each admission costs amortised
O(1). Everything runs on one event loop without awaiting in between, which makes each
admission atomic with no lock. Parallel slots need no lease here: a process that dies takes
its slots with it.

A log lives in C arrays (its times, and a charge's amounts), not in a deque of Python
objects: a busy key holds an entry per request for a whole window (180,000 at 3,000
requests/s). As objects (a float, a tuple, an int and a dict slot each) they took 33 MB,
scattered among every request's short-lived objects, and a keyed request in the in-process
bench cost 223-231 µs against 208-213 µs as arrays (alternating; 178-183 µs without keys).
As arrays they take 6 MB.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Sequence

from proxy.limits.backend import Decision, Grant
from proxy.limits.errors import Reason

#: The largest amount an entry holds (the arrays' 64-bit integers); a larger figure (an
#: upstream's absurd usage) is charged as this, which no limit lets through anyway. A negative
#: one is charged as 0.
MOST = 2**62
_COMPACT = 1024  # dropped entries kept in front of the arrays before moving the rest down


def _amount(tokens: int) -> int:
    """``tokens`` as an entry holds it: 0 to ``MOST``."""
    return 0 if tokens < 0 else tokens if tokens < MOST else MOST


class _Times:
    """A sliding log of times, oldest first, in a C array.

    Entries are numbered in order of arrival, for good (``base + position``). Dropped entries
    stay at the front of the array until they are most of it; the rest is then moved down in
    one memmove. The admission's hot path reads ``times`` and ``head`` itself.
    """

    __slots__ = ("base", "head", "times")

    def __init__(self) -> None:
        self.times = array("d")
        self.head = 0  # the position of the oldest entry still in the window
        self.base = 0  # the number of the entry at position 0

    def __len__(self) -> int:
        return len(self.times) - self.head

    def __getitem__(self, index: int) -> float:
        """The time of the ``index``-th oldest entry in the window."""
        return self.times[self.head + index]

    def drop(self, edge: float) -> int:
        """Drop the entries made at or before ``edge``; return how many."""
        times, head = self.times, self.head
        end = len(times)
        while head < end and times[head] <= edge:
            head += 1
        dropped = head - self.head
        self._forget(head)
        return dropped

    def _forget(self, head: int) -> None:
        """Move the front to ``head``; move the rest down once the dropped are most."""
        if head >= _COMPACT and 2 * head >= len(self.times):
            self._move_down(head)
            self.base += head
            head = 0
        self.head = head

    def _move_down(self, head: int) -> None:
        del self.times[:head]


class _Charges(_Times):
    """A sliding log of charges: each entry's time and amount (tokens)."""

    __slots__ = ("amounts",)

    def __init__(self) -> None:
        super().__init__()
        self.amounts = array("q")

    def append(self, at: float, amount: int) -> int:
        """Add a charge of ``amount`` (already within 0 to ``MOST``: ``_Log.charge``) made
        ``at``; return its number (which ``amend`` takes)."""
        self.times.append(at)
        self.amounts.append(amount)
        return self.base + len(self.times) - 1

    def drop(self, edge: float) -> int:
        """Drop the charges made at or before ``edge``; return the sum of their amounts."""
        times, amounts, head = self.times, self.amounts, self.head
        end, dropped = len(times), 0
        while head < end and times[head] <= edge:
            dropped += amounts[head]
            head += 1
        self._forget(head)
        return dropped

    def _move_down(self, head: int) -> None:
        del self.amounts[:head]
        super()._move_down(head)

    def amend(self, number: int, amount: int) -> int | None:
        """Set charge ``number``'s amount; return the change, or None if it left the window."""
        position = number - self.base
        if position < self.head:
            return None
        amount = _amount(amount)
        change = amount - self.amounts[position]
        self.amounts[position] = amount
        return change

    def free_at(self, need: int) -> float | None:
        """When the charge whose leaving frees ``need`` (its amount and the older ones') was
        made; None if even an empty window would not free that much."""
        freed, amounts = 0, self.amounts
        for position in range(self.head, len(amounts)):
            freed += amounts[position]
            if freed >= need:
                return self.times[position]
        return None


class _Log:
    """The state of one key: when its requests came, what tokens they were charged (and
    which charge is the reservation of each request not yet settled), and the ids of the
    requests in flight."""

    __slots__ = ("charged", "flight", "requests", "tokens", "total")

    def __init__(self) -> None:
        self.requests = _Times()
        self.tokens = _Charges()
        self.total = 0  # the tokens in the window
        self.charged: dict[int, int] = {}  # grant id -> its reservation's number, until settled
        self.flight: set[int] = set()

    def trim(self, edge: float) -> None:
        """Forget what happened at or before ``edge`` (it has left the window)."""
        requests, tokens = self.requests, self.tokens
        # Has each log's oldest entry left the window? Asked in line: on every admission and
        # settlement, and most often the answer is no.
        if requests.head < len(requests.times) and requests.times[requests.head] <= edge:
            requests.drop(edge)
        if tokens.head < len(tokens.times) and tokens.times[tokens.head] <= edge:
            base = tokens.base
            self.total -= tokens.drop(edge)
            if tokens.base != base and self.charged:
                # Moved down: forget the numbers of reservations that left the window, or a
                # grant never settled (a bug elsewhere) would keep its number forever. Settled,
                # such a grant is charged its overrun, as any whose reservation left.
                first = tokens.base + tokens.head
                self.charged = {grant: at for grant, at in self.charged.items() if at >= first}

    def charge(self, now: float, tokens: int) -> int:
        amount = _amount(tokens)
        self.total += amount
        return self.tokens.append(now, amount)


class MemoryBackend:
    """The default backend: per-process sliding logs, ``window`` seconds long."""

    lease: float | None = None

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
        return self.admit_now(grant)

    def admit_now(self, grant: Grant) -> Decision:
        """``admit``, as a plain call: nothing here waits (the Limiter calls this one)."""
        now = self._clock()
        log = self._log(grant.key, now)
        limits = grant.limits
        rpm, tpm, parallel = limits.rpm, limits.tpm, limits.max_parallel
        requests, flight = log.requests, log.flight
        times = requests.times
        count = len(times) - requests.head
        if (
            (rpm is not None and count >= rpm)
            or (tpm is not None and log.total + grant.tokens > tpm)
            or (parallel is not None and len(flight) >= parallel)
        ):
            return self._decision(log, grant, now, self._refusal(log, grant))
        # Admitted (the hot path, in one pass, reading the logs' arrays itself): ``_record``
        # and ``_decision``'s answer for an admission, without their general cases
        # (tests/test_limits.py holds the two to the same answers).
        window = self.window
        reset_requests = reset_tokens = 0.0
        if rpm is not None:
            times.append(now)
            count += 1
            reset_requests = times[requests.head] + window - now
            reset_requests = reset_requests if reset_requests > 0.0 else 0.0
        if tpm is not None:
            log.charged[grant.id] = log.charge(now, grant.tokens)
            tokens = log.tokens
            at: float | None = tokens.times[tokens.head]
            if tokens.amounts[tokens.head] < 1:  # settled at 0: the first one that frees a token
                at = tokens.free_at(1)
            if at is not None:
                reset_tokens = at + window - now
                reset_tokens = reset_tokens if reset_tokens > 0.0 else 0.0
        if parallel is not None:
            flight.add(grant.id)
        # admitted, refused_by, requests, tokens, parallel, reset_requests, reset_tokens
        return Decision(True, None, count, log.total, len(flight), reset_requests, reset_tokens)

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
            log.requests.times.append(now)
        if limits.tpm is not None:
            log.charged[grant.id] = log.charge(now, grant.tokens)
        if limits.max_parallel is not None:
            log.flight.add(grant.id)

    def _decision(self, log: _Log, grant: Grant, now: float, refused: Reason | None) -> Decision:
        reset_requests = reset_tokens = 0.0
        if grant.limits.rpm is not None:
            at = self._blocking_request(log, grant.limits.rpm, refused)
            reset_requests = self._free_in(at, now, refused)
        if grant.limits.tpm is not None:
            need = log.total + grant.tokens - grant.limits.tpm if refused == "tokens" else 1
            reset_tokens = self._free_in(log.tokens.free_at(need), now, refused)
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
        self.settle_now(grant, used_tokens)

    def settle_now(self, grant: Grant, used_tokens: int | None) -> None:
        """``settle``, as a plain call (the Limiter's tickets call this one)."""
        log = self._logs.get(grant.key)
        if log is None:
            return
        log.flight.discard(grant.id)
        entry = log.charged.pop(grant.id, None)
        if used_tokens is None or grant.limits.tpm is None:  # keep the reservation; or none
            return
        now = self._clock()
        log.trim(now - self.window)  # an expired reservation must not be "replaced"
        change = None if entry is None else log.tokens.amend(entry, used_tokens)
        if change is not None:  # still in the window: the reservation replaced
            log.total += change
        elif used_tokens > grant.tokens:  # it left the window already: charge the overrun now
            log.charge(now, used_tokens - grant.tokens)

    async def renew(self, grants: Sequence[Grant]) -> None:
        """Nothing to renew: slots here live until settled."""

    async def ping(self) -> None:
        """Always able to answer."""

    async def aclose(self) -> None:
        self._logs.clear()
