"""Graceful shutdown: on SIGTERM, stop taking work, let streams finish, then end the rest cleanly.

uvicorn, on SIGTERM, stops accepting connections and waits for the open ones. What it cannot do
is tell a stream in flight to end *properly*: after ``timeout_graceful_shutdown`` it cancels the
task, and the client sees a chunked body cut off mid-stream. So the app learns of the signal
itself: at start-up ``Drain.install_signal_hooks`` puts a handler in front of uvicorn's (which
it still calls), in the server process, or in each worker with ``--workers N``. On the signal:

1. ``/readyz`` answers 503 and new chat requests get 503 ``shutting_down``;
2. streams in flight may go on for ``shutdown_grace_seconds``;
3. those still running then get ``data: {"error": {... "code": "shutting_down"}}`` (no
   ``[DONE]``, so clients know the answer is incomplete) and are closed, and uvicorn exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from proxy.errors import ServiceUnavailable

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    """Tracks the requests in flight and ends them when a shutdown's grace period is over."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.draining = False
        self.expired = False
        self._active: set[Any] = set()  # watchdogs of the requests in flight
        self._restore: list[tuple[int, Any]] = []

    def track(self, watchdog: Any) -> None:
        self._active.add(watchdog)

    def untrack(self, watchdog: Any) -> None:
        self._active.discard(watchdog)

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise ServiceUnavailable("The proxy is shutting down; retry on another instance.")

    def begin(self) -> None:
        """Start draining (idempotent); after ``grace`` seconds, end what is still running."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: %d request(s) in flight, grace %g s", len(self._active), self.grace)
        asyncio.get_running_loop().call_later(self.grace, self.expire)

    def expire(self) -> None:
        self.expired = True
        if self._active:
            log.info("grace over: ending %d request(s)", len(self._active))
        for watchdog in list(self._active):
            watchdog.abort("shutdown")

    def install_signal_hooks(self) -> None:
        """Run ``begin`` on SIGTERM/SIGINT before the server's own handler (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return  # e.g. a test server in a thread: no signals there
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue
            self._restore.append((sig, previous))
            signal.signal(sig, self._chained(loop, previous))

    def _chained(
        self, loop: asyncio.AbstractEventLoop, previous: Callable[[int, FrameType | None], Any]
    ) -> Callable[[int, FrameType | None], None]:
        def handler(sig: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self.begin)
            previous(sig, frame)

        return handler

    def remove_signal_hooks(self) -> None:
        while self._restore:
            sig, previous = self._restore.pop()
            signal.signal(sig, previous)
