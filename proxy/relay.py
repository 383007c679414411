"""The relay: the one loop that takes an upstream's answer to a client, for every endpoint.

An endpoint parses its request and hands the relay a ``Call``, its ``Route`` and the API's
format (``proxy.formats``); the relay does the rest, the same way for every API:

- a ``Watchdog`` watches the request: the client going away, a client that stopped reading,
  the request's deadline, a shutdown (``proxy.watchdog``), and pings a silent stream;
- ``open`` the upstream; before anything was sent, a failure is an HTTP error in the API's
  shape; then either
- **stream**: SSE headers, then each upstream item the moment it arrives, through the
  format's ``feed``, as its own ASGI message (uvicorn writes one HTTP chunk for each: nothing
  here may batch or delay a write); at the end the format's tail (``[DONE]``...), or after a
  failure the format's error event and no completion marker; or
- **complete**: the format's one JSON answer;
- and the access record (time to first token, chunks, tokens, outcome) and the stream
  metrics (gaps, streams in flight) are kept on the way.

Every way a request can end maps to one ``Outcome`` in one place (``_ending``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import orjson

from proxy.asgi import SSE_HEADERS, Receive, Send, send_json
from proxy.errors import Outcome, ProxyError, ServiceUnavailable, UpstreamDeadline
from proxy.observability.access import Access
from proxy.observability.metrics import Metrics
from proxy.shutdown import Drain
from proxy.upstreams.base import Call, Reply, Route
from proxy.watchdog import Watchdog


class StreamFormat(Protocol):
    """One streamed answer in a client API's wire format. One instance per request."""

    ping: bytes  # what keeps a silent stream alive (an SSE comment, or the API's own event)
    committed: bool  # an item carrying part of the answer has been fed

    def feed(self, item: Any) -> bytes | None:
        """The frames for one upstream item (``None``: nothing to send). May raise."""
        ...

    def end(self) -> bytes:
        """The upstream ended cleanly: the last frames. Raises if the answer is incomplete."""
        ...

    def error(self, error: ProxyError) -> bytes:
        """The frames that end a stream that failed after it started."""
        ...

    @property
    def usage(self) -> dict[str, Any] | None:
        """The upstream's usage (chat-shaped: prompt_tokens, completion_tokens), if sent."""
        ...


class Format(Protocol):
    """A client API's shapes (``formats.chat.ChatFormat``...)."""

    def stream(self, call: Call) -> StreamFormat: ...

    def items(self, call: Call, reply: Reply) -> Any:
        """The reply as items to stream (an upstream that answered one JSON to a stream
        request is turned into items)."""
        ...

    async def complete(self, call: Call, reply: Reply) -> dict[str, Any]: ...

    def error_body(self, error: ProxyError) -> bytes: ...


SHUTTING_DOWN = "The proxy is shutting down and ended this stream before it was complete; retry."


class Relay:
    """See the module docstring. One per app; ``serve`` once per request."""

    def __init__(
        self,
        *,
        drain: Drain,
        metrics: Metrics | None,
        keepalive: float,
        send_timeout: float | None,
    ) -> None:
        self.drain = drain
        self.metrics = metrics
        self.keepalive = keepalive
        self.send_timeout = send_timeout

    async def serve(
        self,
        call: Call,
        route: Route,
        api: Format,
        receive: Receive,
        send: Send,
        access: Access,
    ) -> None:
        access.model, access.upstream, access.stream = call.model, route.upstream_name, call.stream
        stream = api.stream(call) if call.stream else None
        ping = stream.ping if stream is not None else b""
        watchdog = Watchdog(receive, send, self.keepalive, self.send_timeout, route.deadline, ping)
        watchdog.start()
        self.drain.track(watchdog)
        reply: Reply | None = None
        try:
            reply = await route.upstream.open(call, route)
            if stream is not None:
                items = api.items(call, reply)  # may still fail as an HTTP error
                await self._stream(items, stream, route, send, watchdog, access)
            else:
                completion = await api.complete(call, reply)
                access.count_tokens(completion.get("usage"))
                await send_json(send, 200, orjson.dumps(completion))
        except ProxyError as error:  # before anything was sent: an HTTP error
            access.end(error.outcome, error.kind)
            await _last(send, watchdog, api.error_body(error), error.status, error.headers)
        except asyncio.CancelledError:
            if watchdog.reason is None:  # not ours: the server's
                raise
            _uncancel()
            ending = _ending(watchdog, route, access)
            if ending is not None:  # the client can still be told, as an HTTP error
                await _last(send, watchdog, api.error_body(ending), ending.status)
        finally:
            self.drain.untrack(watchdog)
            watchdog.stop()
            if reply is not None:
                await reply.aclose()

    async def _stream(
        self,
        items: Any,
        stream: StreamFormat,
        route: Route,
        send: Send,
        watchdog: Watchdog,
        access: Access,
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        last = watchdog.start_keepalive()
        gaps = in_flight = None
        if self.metrics is not None:
            gaps, in_flight = self.metrics.stream_started(access)
        count = 0
        try:
            async for item in items:
                frames = stream.feed(item)
                if frames is not None:
                    await send({"type": "http.response.body", "body": frames, "more_body": True})
                    now = watchdog.wrote()
                    if count and gaps is not None:
                        gaps.observe(now - last)
                    last = now
                    count += 1
                    if access.ttft is None and stream.committed:
                        access.ttft = now - access.started
            tail = stream.end()
            access.count_tokens(stream.usage)
        except ProxyError as error:  # after the headers: an error event, no completion marker
            access.end(error.outcome, error.kind)
            tail = stream.error(error)
        except asyncio.CancelledError:
            if watchdog.reason is None:
                raise
            _uncancel()
            ending = _ending(watchdog, route, access)
            if ending is None:  # the client is gone or stuck: nothing more can reach it
                return
            tail = stream.error(ending)
        finally:
            access.chunks = count
            if in_flight is not None:
                in_flight.dec()
        watchdog.stop_keepalive()
        await _last(send, watchdog, tail)


def _ending(watchdog: Watchdog, route: Route, access: Access) -> ProxyError | None:
    """Why the watchdog cancelled the request -> its outcome, and the error the client can
    still be told (None: nothing more can reach it)."""
    reason = watchdog.reason
    if watchdog.final:  # cancelled again while ending: the outcome is already recorded
        return None
    if reason == "shutdown":
        access.end(Outcome.SHUTDOWN)
        return ServiceUnavailable(SHUTTING_DOWN)
    if reason == "deadline":
        limit = f" ({route.deadline:g} s)" if route.deadline else ""
        error = UpstreamDeadline(f"The upstream's answer took longer than the proxy allows{limit}.")
        access.end(Outcome.UPSTREAM, error.kind)
        return error
    gone = Outcome.CLIENT_SEND_TIMEOUT if reason == "send_timeout" else Outcome.CLIENT_DISCONNECT
    access.end(gone)
    return None


async def _last(
    send: Send,
    watchdog: Watchdog,
    body: bytes,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """The response's last message (a whole JSON response when ``status`` is given): given up
    without a word if the watchdog cancels it (a stuck or gone client, a shutdown)."""
    try:
        if status is None:
            await send({"type": "http.response.body", "body": body, "more_body": False})
        else:
            await send_json(send, status, body, headers)
    except asyncio.CancelledError:
        if watchdog.reason is None:
            raise
        _uncancel()


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
