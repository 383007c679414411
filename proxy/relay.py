"""The relay: the one loop that takes an upstream's answer to a client, for every endpoint.

An endpoint parses its request and hands the relay a ``Call``, its routing ``Plan`` and the
API's format (``proxy.formats``); the relay does the rest, the same way for every API:

- a ``Watchdog`` watches the request: the client going away, a client that stopped reading,
  the request's deadline, a shutdown (``proxy.watchdog``), and pings a silent stream;
- the plan's attempts run until one succeeds: for a stream, until its first item carrying
  part of the answer (the commit; within the deployment's ``first_token``); for a non-stream
  answer, until it is complete. Until then every failure may be retried or fallen over
  (``proxy.routing``), invisibly to the client, who has seen at most the response headers
  and pings: the headers wait for the commit, or ``keepalive_seconds`` of waiting, whichever
  comes first (README "Routing": why);
- **stream**: the committed frames, then each item the moment it arrives, through the
  format's ``feed``, as its own ASGI message (uvicorn writes one HTTP chunk for each: nothing
  here may batch or delay a write); at the end the format's tail (``[DONE]``...), or after a
  failure the format's error event and no completion marker, never a replay;
- **a preamble** (optional, ``StreamFormat.preamble``): what an API says before any content
  and must say at once, e.g. Anthropic's ``message_start``, which a client must have without
  waiting for the first token. The relay asks each attempt's stream for it as soon as that
  attempt's upstream has answered (its response headers are in), and after each item fed
  before the commit (a passed-through upstream sends its own). The first preamble of the
  response goes out at once, with the response headers (so without the ``x-proxy-*`` ones:
  the answering attempt is not known yet); the preambles of later attempts (a retry, a
  fallback) are asked for all the same, so their streams know theirs is spoken for, and
  dropped: a client never sees the message open twice. A failure after it is retried or
  fallen over as before; only if nothing answers does the client get the error event rather
  than an HTTP status, as after a keepalive ping. Chat has no preamble: for it nothing of
  this happens;
- **complete**: the format's one JSON answer;
- the access record (time to first token, chunks, tokens, attempts, outcome) and the metrics.

Every way a request can end maps to one ``Outcome`` in one place (``ended_by``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, Protocol

import orjson

from proxy.asgi import SSE_HEADERS, Receive, Send, send_json
from proxy.errors import (
    FirstTokenTimeout,
    Outcome,
    ProxyError,
    ServiceUnavailable,
    UpstreamDeadline,
)
from proxy.observability.access import Access
from proxy.observability.metrics import Metrics
from proxy.routing import Attempt, Plan
from proxy.shutdown import Drain
from proxy.upstreams.base import Call, Reply, Route
from proxy.watchdog import Watchdog


class StreamFormat(Protocol):
    """One streamed answer in a client API's wire format. One instance per attempt."""

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

    # Optional (looked up with getattr, so a format without it needs nothing):
    #     def preamble(self) -> bytes | None
    # the frames to send before the commit, at once (module docstring); asked after the
    # upstream answered and after each item fed before the commit; once it returned frames
    # it returns None, and its ``feed`` never repeats them.


class Exchange(Protocol):
    """One attempt's conversation with its upstream, for a client speaking one API: what the
    upstream is asked (``call``: translated when the upstream speaks another API, e.g. a
    Responses call to a chat-only server), and how its answer becomes the client's."""

    call: Call

    def stream(self) -> StreamFormat: ...

    def items(self, reply: Reply) -> Any:
        """The reply as items to stream (an upstream that answered one JSON to a stream
        request is turned into items)."""
        ...

    async def complete(self, reply: Reply) -> dict[str, Any]:
        """The one JSON answer of a non-stream request."""
        ...

    # Optional: ``usage``, the chat-shaped usage of the answer ``complete`` returned, when that
    # answer's own ``usage`` is in another shape (Anthropic's input_tokens/output_tokens).


class Format(Protocol):
    """A client API (``formats.chat.ChatFormat``...): one per endpoint."""

    ping: bytes  # what keeps a silent stream alive (an SSE comment, or the API's own event)

    def exchange(self, call: Call, route: Route) -> Exchange:
        """How one attempt talks to ``route``'s upstream (may raise ``InvalidRequest``:
        something that upstream cannot be asked)."""
        ...

    def error_body(self, error: ProxyError) -> bytes:
        """An error as this API's HTTP error body."""
        ...

    def error_event(self, error: ProxyError) -> bytes:
        """An error as this API's last event of a failed stream."""
        ...


SHUTTING_DOWN = "The proxy is shutting down and ended this stream before it was complete; retry."


@dataclasses.dataclass(slots=True)
class _Committed:
    """A stream attempt that committed: what to write first, and what follows."""

    attempt: Attempt
    reply: Reply
    stream: StreamFormat
    items: Any
    held: list[bytes]  # frames produced up to and including the commit
    tail: bytes | None  # the stream's end, when the upstream ended before it committed


class Relay:
    """See the module docstring. One per app; ``serve`` once per request."""

    pings = True  # the API's ping keeps a silent answer alive (not in a body passed on as is)

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
        plan: Plan,
        deadline: float | None,
        api: Format,
        receive: Receive,
        send: Send,
        access: Access,
        body_send: Send,
    ) -> None:
        """Answer ``call``; ``body_send`` writes the stream's body (``asgi.body_sender``)."""
        access.model, access.stream = call.model, call.stream
        ping = api.ping if self.pings else b""
        watchdog = Watchdog(
            receive, send, self.keepalive, self.send_timeout, deadline, ping, body_send
        )
        watchdog.start()
        self.drain.track(watchdog)
        try:
            await self.answer(call, plan, api, send, watchdog, access)
        finally:
            self.drain.untrack(watchdog)
            watchdog.stop()
            access.routed(plan)

    async def answer(
        self, call: Call, plan: Plan, api: Format, send: Send, watchdog: Watchdog, access: Access
    ) -> None:
        """Answer the request under ``watchdog``: a stream, or one JSON."""
        if call.stream:
            await self._stream(call, plan, api, send, watchdog, access)
        else:
            await self._complete(call, plan, api, send, watchdog, access)

    async def _complete(
        self, call: Call, plan: Plan, api: Format, send: Send, watchdog: Watchdog, access: Access
    ) -> None:
        attempt: Attempt | None = None
        try:
            async for attempt in plan:
                reply: Reply | None = None
                try:
                    exchange = api.exchange(_as(call, attempt), attempt.route)
                    reply = await attempt.route.upstream.open(exchange.call, attempt.route)
                    completion = await exchange.complete(reply)
                except ProxyError as error:
                    plan.failed(attempt, error)
                    continue
                finally:
                    if reply is not None:
                        await reply.aclose()
                plan.succeeded(attempt)
                access.answered(attempt)
                access.count_tokens(getattr(exchange, "usage", completion.get("usage")))
                headers = served_headers(plan, attempt)
                await send_last(send, watchdog, orjson.dumps(completion), 200, headers)
                return
        except ProxyError as error:  # every attempt failed: the last error, as HTTP
            access.end(error.outcome, error.kind)
            await send_last(send, watchdog, api.error_body(error), error.status, error.headers)
        except asyncio.CancelledError:
            if watchdog.reason is None:  # not ours: the server's
                raise
            uncancel()
            ending = ended_by(watchdog, watchdog.deadline_seconds, access)
            if ending is not None:  # the client can still be told, as an HTTP error
                await send_last(send, watchdog, api.error_body(ending), ending.status)
        finally:
            if attempt is not None:
                attempt.release()

    async def _stream(
        self, call: Call, plan: Plan, api: Format, send: Send, watchdog: Watchdog, access: Access
    ) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS}
        watchdog.start_keepalive(headers=start)  # the headers wait for the commit (or a ping)
        committed: _Committed | None = None
        try:
            committed = await self._commit(call, plan, api, _Opening(send, watchdog))
            access.answered(committed.attempt)
            headers = [*SSE_HEADERS, *_header_pairs(served_headers(plan, committed.attempt))]
            await watchdog.send_headers({**start, "headers": headers})
            await self._write(committed, send, watchdog, access)
        except ProxyError as error:  # nothing committed: every attempt failed
            access.end(error.outcome, error.kind)
            await watchdog.stop_keepalive()
            if watchdog.headers_sent:  # a ping went out: the error event, as after a commit
                await send_last(send, watchdog, api.error_event(error))
            else:
                await send_last(send, watchdog, api.error_body(error), error.status, error.headers)
        except asyncio.CancelledError:
            if watchdog.reason is None:
                raise
            uncancel()
            ending = ended_by(watchdog, watchdog.deadline_seconds, access)
            if ending is not None and committed is None and not watchdog.headers_sent:
                await send_last(send, watchdog, api.error_body(ending), ending.status)
            elif ending is not None and committed is None:
                await send_last(send, watchdog, api.error_event(ending))
        finally:
            if committed is not None:
                committed.attempt.release()
                await committed.reply.aclose()

    async def _commit(self, call: Call, plan: Plan, api: Format, opening: _Opening) -> _Committed:
        """Run the plan's attempts until one commits (its first item carrying part of the
        answer); raise the last error if none does."""
        async for attempt in plan:
            reply: Reply | None = None
            try:
                exchange = api.exchange(_as(call, attempt), attempt.route)
                stream = exchange.stream()
                reply = await attempt.route.upstream.open(exchange.call, attempt.route)
                items = exchange.items(reply)
                held, tail = await _until_commit(items, stream, attempt, opening)
            except ProxyError as error:
                if reply is not None:
                    await reply.aclose()
                plan.failed(attempt, error)
                continue
            except BaseException:
                if reply is not None:
                    await reply.aclose()
                attempt.release()
                raise
            plan.succeeded(attempt, time.monotonic() - attempt.started)
            return _Committed(attempt, reply, stream, items, held, tail)
        raise AssertionError("a plan ends by raising")  # pragma: no cover

    async def _write(
        self, committed: _Committed, send: Send, watchdog: Watchdog, access: Access
    ) -> None:
        """The committed frames, then the rest of the stream as it arrives, then its end."""
        stream = committed.stream
        gaps = in_flight = None
        if self.metrics is not None:
            gaps, in_flight = self.metrics.stream_started(access)
        last, count = 0.0, 0
        body = watchdog.body_send
        try:
            for held in committed.held:  # written back to back: the commit's burst
                await body({"type": "http.response.body", "body": held, "more_body": True})
                now = watchdog.wrote()
                if count and gaps is not None:
                    gaps.observe(now - last)
                last = now
                count += 1
            access.ttft = last - access.started
            if committed.tail is None:
                async for item in committed.items:
                    frames = stream.feed(item)
                    if frames is not None:
                        await body(
                            {"type": "http.response.body", "body": frames, "more_body": True}
                        )
                        now = watchdog.wrote()
                        if gaps is not None:
                            gaps.observe(now - last)
                        last = now
                        count += 1
            tail = stream.end() if committed.tail is None else committed.tail
            access.count_tokens(stream.usage)
        except ProxyError as error:  # after the commit: an error event, no completion marker
            access.end(error.outcome, error.kind)
            tail = stream.error(error)
        except asyncio.CancelledError:
            if watchdog.reason is None:
                raise
            uncancel()
            ending = ended_by(watchdog, watchdog.deadline_seconds, access)
            if ending is None:  # the client is gone or stuck: nothing more can reach it
                return
            tail = stream.error(ending)
        finally:
            access.chunks = count
            if in_flight is not None:
                in_flight.dec()
        await watchdog.stop_keepalive()
        await send_last(send, watchdog, tail)


class _Opening:
    """The response's preamble (module docstring): the first one an attempt's stream has goes
    out at once, with the response headers; every later one is dropped."""

    __slots__ = ("send", "sent", "watchdog")

    def __init__(self, send: Send, watchdog: Watchdog) -> None:
        self.send = send
        self.watchdog = watchdog
        self.sent = False

    async def offer(self, preamble: bytes | None) -> None:
        if preamble is None or self.sent:
            return
        self.sent = True
        await self.watchdog.send_headers()  # the held-back ones, unless a ping sent them
        await self.send({"type": "http.response.body", "body": preamble, "more_body": True})
        self.watchdog.wrote()


async def _until_commit(
    items: Any, stream: StreamFormat, attempt: Attempt, opening: _Opening
) -> tuple[list[bytes], bytes | None]:
    """Frames up to the first one carrying part of the answer (held back until then), within
    the deployment's ``first_token`` (counted from the attempt's start); and the stream's
    tail if the upstream ended first (complete, or this raises). A preamble is offered as
    soon as the stream has one."""
    held: list[bytes] = []
    limit = attempt.deployment.first_token
    remaining = None if limit is None else limit - (time.monotonic() - attempt.started)
    preamble = getattr(stream, "preamble", None)
    try:
        async with asyncio.timeout(remaining):
            if preamble is not None:
                await opening.offer(preamble())
            async for item in items:
                frames = stream.feed(item)
                if preamble is not None:
                    await opening.offer(preamble())
                if frames is not None:
                    held.append(frames)
                    if stream.committed:
                        return held, None
    except TimeoutError:
        raise FirstTokenTimeout(
            f"The upstream '{attempt.route.upstream_name}' sent no content within {limit:g} s."
        ) from None
    return held, stream.end()  # raises if the answer is incomplete: not committed


def _as(call: Call, attempt: Attempt) -> Call:
    """The call as the attempt answers it: a fallback answers under its own public name."""
    return call if attempt.model == call.model else dataclasses.replace(call, model=attempt.model)


def served_headers(plan: Plan, attempt: Attempt) -> dict[str, str]:
    """How the answer was served, in response headers (README "Routing")."""
    return {
        "x-proxy-attempts": str(len(plan.attempts)),
        "x-proxy-model": attempt.model,
        "x-proxy-deployment": attempt.deployment.name,
    }


def _header_pairs(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in headers.items()]


def ended_by(watchdog: Watchdog, deadline: float | None, access: Access) -> ProxyError | None:
    """Why the watchdog cancelled the request -> its outcome, and the error the client can
    still be told (None: nothing more can reach it)."""
    reason = watchdog.reason
    if watchdog.final:  # cancelled again while ending: the outcome is already recorded
        return None
    if reason == "shutdown":
        access.end(Outcome.SHUTDOWN)
        return ServiceUnavailable(SHUTTING_DOWN)
    if reason == "deadline":
        limit = f" ({deadline:g} s)" if deadline else ""
        error = UpstreamDeadline(f"The upstream's answer took longer than the proxy allows{limit}.")
        access.end(Outcome.UPSTREAM, error.kind)
        return error
    gone = Outcome.CLIENT_SEND_TIMEOUT if reason == "send_timeout" else Outcome.CLIENT_DISCONNECT
    access.end(gone)
    return None


async def send_last(
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
        uncancel()


def uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
