"""A per-request watchdog: notices a client that went away and keeps a silent stream alive.

While the proxy waits on its upstream it is not reading from the client, so it would only
learn of a disconnect when a write fails, possibly minutes later, while a paid upstream keeps
generating. The watchdog keeps one ``receive()`` pending; ``http.disconnect`` cancels the task
serving the request, whose ``finally`` closes the upstream response at once. A shutdown whose
grace period is over ends requests the same way (``abort("shutdown")``).

Keepalive: once the SSE headers are out, a timer sends ``: ping`` whenever nothing was written
to the client for ``keepalive`` seconds (gateways cut idle connections, often at 60 s). The hot
path only records the time of each write; no task wakes up while chunks flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from proxy.asgi import Message, Receive, Send
from proxy.sse import PING

_PING_MESSAGE = {"type": "http.response.body", "body": PING, "more_body": True}


class Watchdog:
    """Watches one request; ``start()`` in the serving task, ``stop()`` in its ``finally``."""

    __slots__ = (
        "_keepalive",
        "_loop",
        "_ping",
        "_receive",
        "_receiver",
        "_send",
        "_task",
        "_timer",
        "last_write",
        "pings",
        "reason",
    )

    def __init__(self, receive: Receive, send: Send, keepalive: float) -> None:
        self._receive = receive
        self._send = send
        self._keepalive = keepalive
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._receiver: asyncio.Future[Message] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ping: asyncio.Task[None] | None = None
        self.reason: str | None = None  # why the watchdog cancelled the request, if it did
        self.last_write = 0.0
        self.pings = 0

    def start(self) -> None:
        """Begin watching for a disconnect (the request body must have been read)."""
        self._task = asyncio.current_task()
        self._receiver = asyncio.ensure_future(self._receive())
        self._receiver.add_done_callback(self._on_message)

    def _on_message(self, future: asyncio.Future[Message]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        if future.result().get("type") == "http.disconnect":
            self.abort("disconnect")
        else:  # a stray body message: keep listening
            self._receiver = asyncio.ensure_future(self._receive())
            self._receiver.add_done_callback(self._on_message)

    def abort(self, reason: str) -> None:
        """Cancel the serving task, recording why ("disconnect", "shutdown")."""
        if self._task is not None and self.reason is None:
            self.reason = reason
            self._task.cancel()

    def start_keepalive(self) -> float:
        """Call once the response headers are sent: pings begin after ``keepalive`` of silence.

        Returns the time (``time.perf_counter()``) the headers went out."""
        self.last_write = time.perf_counter()
        self._timer = self._loop.call_later(self._keepalive, self._tick)
        return self.last_write

    def wrote(self) -> float:
        """Record a write to the client (the watchdog's only per-chunk cost); returns its time."""
        self.last_write = now = time.perf_counter()
        return now

    def _tick(self) -> None:
        silent = time.perf_counter() - self.last_write
        wait = self._keepalive - silent
        if wait <= 0 and (self._ping is None or self._ping.done()):
            self._ping = self._loop.create_task(self._send_ping())
            self.last_write = time.perf_counter()
            wait = self._keepalive
        self._timer = self._loop.call_later(max(wait, 0.001), self._tick)

    async def _send_ping(self) -> None:
        with contextlib.suppress(Exception):  # a failed ping means a gone client: noticed above
            await self._send(_PING_MESSAGE)
            self.pings += 1

    def stop_keepalive(self) -> None:
        """No ping may follow: call before the final message of the response."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ping is not None and not self._ping.done():
            self._ping.cancel()

    def stop(self) -> None:
        """Stop everything; after this the serving task is never cancelled by the watchdog."""
        self.stop_keepalive()
        self._task = None
        if self._receiver is not None and not self._receiver.done():
            self._receiver.cancel()
