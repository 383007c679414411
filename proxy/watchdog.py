"""A per-request watchdog: notices a client that went away or stopped reading, keeps a silent
stream alive, and bounds how long a request may run.

While the proxy waits on its upstream it is not reading from the client, so it would only
learn of a disconnect when a write fails, possibly minutes later, while a paid upstream keeps
generating. The watchdog keeps one ``receive()`` pending; ``http.disconnect`` cancels the task
serving the request, whose ``finally`` closes the upstream response at once. The other ends
work the same way, through ``abort(reason)``:

- ``"shutdown"``: the shutdown grace period is over (``proxy.shutdown``);
- ``"send_timeout"``: the client stopped reading. A healthy stream completes a write at least
  every ``keepalive`` seconds (a chunk or a ``: ping``), so no completed write for
  ``keepalive + send_timeout`` means its socket buffer is full and stays full;
- ``"deadline"``: the request ran past ``deadline`` seconds (an upstream that never ends).

A later reason cancels again: once aborted, the serving task writes at most one last message
(the error event that says why) and gets ``FINAL_WRITE`` seconds for it; a stuck client, a
disconnect or a shutdown in the meantime cancels it for good (``final``), so no request
outlives its deadline or the shutdown grace by more than that.

One timer serves all of these, and pings: once a stream has begun it sends its ping (``:
ping``, or the API's own event) whenever nothing was written for ``keepalive`` seconds
(gateways cut idle connections, often at 60 s). Before a stream commits, its response
headers may still be held back (``start_keepalive(headers=...)``): then the first ping sends
them first, so a silent upstream never costs the connection. The hot path only records the
time of each write; no task wakes up while chunks flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from proxy.asgi import Message, Receive, Send
from proxy.sse import PING

FINAL_WRITE = 1.0  # seconds an aborted request has for its last message


class Watchdog:
    """Watches one request; ``start()`` in the serving task, ``stop()`` in its ``finally``."""

    __slots__ = (
        "_deadline",
        "_final",
        "_headers",
        "_keepalive",
        "_loop",
        "_ping",
        "_ping_message",
        "_pinging",
        "_receive",
        "_receiver",
        "_send",
        "_send_timeout",
        "_task",
        "_timer",
        "body_send",
        "deadline_seconds",
        "final",
        "headers_sent",
        "last_write",
        "reason",
    )

    def __init__(
        self,
        receive: Receive,
        send: Send,
        keepalive: float,
        send_timeout: float | None = None,
        deadline: float | None = None,
        ping: bytes = PING,
        body_send: Send | None = None,
    ) -> None:
        self._ping_message = {"type": "http.response.body", "body": ping, "more_body": True}
        self._receive = receive
        self._send = send
        # What a stream's body chunks are written with (``proxy.asgi.body_sender``).
        self.body_send = send if body_send is None else body_send
        self._keepalive = keepalive
        self._send_timeout = send_timeout
        self.deadline_seconds = deadline  # the request's bound, as configured
        self._deadline = None if deadline is None else time.perf_counter() + deadline
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._receiver: asyncio.Future[Message] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ping: asyncio.Task[None] | None = None
        self._pinging = False
        self._final: asyncio.TimerHandle | None = None
        self._headers: Message | None = None  # held-back response headers, sent by a ping
        self.headers_sent = False
        self.reason: str | None = None  # why the watchdog cancelled the request, if it did
        self.final = False  # cancelled again after that: nothing more may be written
        self.last_write = 0.0

    def start(self) -> None:
        """Begin watching (the request body must have been read)."""
        self._task = asyncio.current_task()
        self._receiver = asyncio.ensure_future(self._receive())
        self._receiver.add_done_callback(self._on_message)
        if self._deadline is not None:
            self._timer = self._loop.call_later(self._deadline - time.perf_counter(), self._tick)

    def _on_message(self, future: asyncio.Future[Message]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        if future.result().get("type") == "http.disconnect":
            self.abort("disconnect")
        else:  # a stray body message: keep listening
            self._receiver = asyncio.ensure_future(self._receive())
            self._receiver.add_done_callback(self._on_message)

    def abort(self, reason: str) -> None:
        """Cancel the serving task, recording why; a second abort cancels it for good."""
        if self._task is None or self.final:
            return
        if self.reason is None:
            self.reason = reason
            self._final = self._loop.call_later(FINAL_WRITE, self.abort, "final_write")
        else:
            self.final = True
        self._task.cancel()

    def start_keepalive(self, headers: Message | None = None) -> float:
        """Pings begin after ``keepalive`` of silence. ``headers``: the response start, not
        sent yet; the first ping sends it first (and ``send_headers`` may send it earlier).

        Returns the time (``time.perf_counter()``) silence is counted from."""
        self._headers = headers
        self.headers_sent = headers is None
        self.last_write = time.perf_counter()
        self._pinging = True
        self._schedule(self._keepalive)
        return self.last_write

    async def send_headers(self, headers: Message | None = None) -> None:
        """Send the held-back response start (``headers`` in its place, if given), unless a
        ping already did. Set before the await: a ping cannot send it twice."""
        if not self.headers_sent:
            self.headers_sent = True
            message = headers or self._headers
            self._headers = None
            assert message is not None
            await self._send(message)

    def wrote(self) -> float:
        """Record a write to the client (the watchdog's only per-chunk cost); returns its time."""
        self.last_write = now = time.perf_counter()
        return now

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._deadline is not None:
            delay = min(delay, self._deadline - time.perf_counter())
        self._timer = self._loop.call_later(max(delay, 0.001), self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._deadline is not None and now >= self._deadline:
            self.abort("deadline")
            return
        if not self.last_write:  # headers not sent yet: only the deadline applies
            self._schedule(self._deadline - now if self._deadline is not None else 3600.0)
            return
        silent = now - self.last_write
        if self._send_timeout is not None and silent >= self._keepalive + self._send_timeout:
            self.abort("send_timeout")
            return
        if (
            self._pinging
            and silent >= self._keepalive
            and (self._ping is None or self._ping.done())
        ):
            self._ping = self._loop.create_task(self._send_ping())
        wait = self._keepalive - silent
        if wait <= 0:  # a ping is on its way: next, look again when the send may have stalled
            wait = self._keepalive + (self._send_timeout or self._keepalive) - silent
        self._schedule(wait)

    async def _send_ping(self) -> None:
        with contextlib.suppress(Exception):  # a failed ping means a gone client: noticed above
            if not self.headers_sent:
                await self.send_headers()
            await self._send(self._ping_message)
            self.last_write = time.perf_counter()  # only once the ping is really written
            if self._pinging:
                self._schedule(self._keepalive)

    async def stop_keepalive(self) -> None:
        """No ping may follow: call before the final message of the response. A ping being
        written is let finish (cut off, it could leave the held-back headers half-known);
        the send timeout and the deadline still watch that, and the last write."""
        self._pinging = False
        if self._ping is not None and not self._ping.done():
            await asyncio.wait([self._ping])

    def stop(self) -> None:
        """Stop everything; after this the serving task is never cancelled by the watchdog."""
        self._pinging = False
        if self._ping is not None and not self._ping.done():
            self._ping.cancel()
        for handle in (self._timer, self._final):
            if handle is not None:
                handle.cancel()
        self._timer = self._final = None
        self._task = None
        if self._receiver is not None and not self._receiver.done():
            self._receiver.cancel()
