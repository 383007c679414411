"""``IdleTimer``: at most ``idle`` seconds for each wait on an upstream body, at almost no cost.

``asyncio.timeout`` around each read would reschedule a timer handle per chunk (about 3 µs, a
third of the proxy's per-chunk CPU). This one keeps a single timer that looks at the clock
only when it fires: the hot path records when a wait began and that it ended (``waiting`` /
``done``), nothing more. Between waits (while the chunk is written to a slow client) nothing
is measured: a stuck client is the watchdog's business, not the upstream's.

Semantics are ``asyncio.timeout``'s: the expired wait is cancelled and, on leaving the
``with`` block, that cancellation becomes ``TimeoutError`` unless someone else also cancelled
the task (``Task.uncancel``), in which case the ``CancelledError`` goes on. Use it in the task
that waits (not across tasks).
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class IdleTimer:
    __slots__ = ("_handle", "_loop", "_task", "expired", "idle", "since", "waiting")

    def __init__(self, idle: float | None) -> None:
        self.idle = idle
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.since = 0.0  # loop time the current wait began
        self.waiting = False
        self.expired = False

    def __enter__(self) -> IdleTimer:
        if self.idle is not None:
            self._task = asyncio.current_task()
            self._handle = self._loop.call_at(self._loop.time() + self.idle, self._check)
        return self

    def wait(self) -> None:
        """A wait on the upstream begins."""
        self.since = self._loop.time()
        self.waiting = True

    def done(self) -> None:
        """The wait ended: data (or the end) arrived."""
        self.waiting = False

    def _check(self) -> None:
        assert self.idle is not None
        now = self._loop.time()
        if self.waiting and now - self.since >= self.idle:
            self.expired = True
            self._handle = None
            if self._task is not None:
                self._task.cancel()
            return
        due = self.since + self.idle if self.waiting else now + self.idle
        self._handle = self._loop.call_at(max(due, now + 0.001), self._check)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.expired and kind is asyncio.CancelledError:
            assert self._task is not None
            if self._task.uncancel() == 0:
                raise TimeoutError from error
