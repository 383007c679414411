"""What every HTTP upstream kind uses: sending over the shared wire, timeouts, errors.

``HTTPClient``, one per configured HTTP upstream:

- ``post`` sends and returns once the response head is in, within ``first_byte`` seconds;
  4xx/5xx become ``UpstreamStatusError``; a request that failed on a kept-alive connection
  before any byte of answer (the upstream closed it just as it was reused) is sent once more;
- ``read`` (a whole JSON body) and ``events`` (SSE) read the body, each wait bounded by the
  ``idle`` timeout given to them (``proxy.idle``);
- ``errors`` is the one boundary where foreign exceptions (aiohttp, httpx, the SSE decoder's)
  become ``ProxyError``s, with the cause kept, and where every error built from upstream data
  is scrubbed of secrets (``proxy.secrets``): a client never sees the upstream's key, wherever
  the upstream put it.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncGenerator, Callable
from typing import Any

import aiohttp
import httpx
import orjson

from proxy import errors
from proxy.errors import ProxyError
from proxy.idle import IdleTimer
from proxy.jsondepth import TOO_DEEP, writable
from proxy.secrets import Scrubber
from proxy.settings import HTTPUpstream
from proxy.sse import MAX_EVENT, Event, EventTooLarge, SSEDecoder
from proxy.upstreams import failures
from proxy.upstreams.wire import Body, Wire, WireResponse

MAX_ERROR_BODY = 64 * 1024  # bytes of an upstream error body worth reading
MAX_BODY = MAX_EVENT  # a whole non-stream answer: bounded like one event
USER_AGENT = "chat-stream-proxy"


class HTTPClient:
    """One upstream's HTTP plumbing over the app's shared wire; see the module docstring."""

    def __init__(self, name: str, config: HTTPUpstream, wire: Wire, scrubber: Scrubber) -> None:
        self.name = name
        self.wire = wire
        self.timeouts = config.timeouts
        self.scrubber = scrubber
        self.base_url = config.base_url.rstrip("/")
        key = config.resolve_key()
        self.headers = {
            "content-type": "application/json",
            "accept": "text/event-stream, application/json",
            "accept-encoding": "identity",  # compression would hold events back
            "user-agent": USER_AGENT,
            **{name.lower(): value for name, value in config.headers.items()},
        }
        if key and config.api_key_header == "x-api-key":  # Anthropic's own API
            self.headers["x-api-key"] = key
        elif key:
            self.headers["authorization"] = f"Bearer {key}"

    def url(self, path: str) -> str:
        return self.base_url + path

    async def post(
        self,
        url: str,
        body: Body,
        *,
        request_id: str = "",
        headers: dict[str, str] | None = None,
        method: str = "POST",
    ) -> WireResponse:
        """Send (``method``: GET, DELETE for files); return once the head is in. Raises
        ``ProxyError`` (4xx/5xx included)."""
        sent = {**self.headers, **(headers or {})}
        if request_id:
            sent["x-request-id"] = request_id
        with self.errors("first_byte"):
            async with asyncio.timeout(self.timeouts.first_byte):
                try:
                    response = await self.wire.send(url, sent, body, self.timeouts, method)
                except (aiohttp.ClientError, httpx.TransportError) as exc:
                    if not isinstance(body, bytes) or not _stale(exc):
                        raise
                    # The upstream closed a kept-alive connection just as we reused it; no
                    # byte of answer came, so sending again (on another connection) is safe.
                    response = await self.wire.send(url, sent, body, self.timeouts, method)
        try:
            with self.errors("idle"):
                await self._check(response)
        except BaseException:
            await response.aclose()
            raise
        return response

    async def _check(self, response: WireResponse) -> None:
        if response.status >= 400:
            raise await self._status_error(response)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise errors.UpstreamMalformed(
                f"The upstream '{self.name}' compressed its answer ({encoding}) although the "
                "proxy asked for identity."
            )

    async def read(self, response: WireResponse, limit: int = MAX_BODY) -> bytes:
        """The whole body (a JSON answer), at most ``limit`` bytes."""
        parts: list[bytes] = []
        size = 0
        # Not over ``chunks``: no generator to make and close per answer.
        with self.errors("idle"), IdleTimer(self.timeouts.idle) as timer:
            while data := await _timed_read(response, timer):
                size += len(data)
                if size > limit:
                    raise errors.UpstreamMalformed(
                        f"The upstream '{self.name}' answered more than {limit} bytes."
                    )
                parts.append(data)
        return b"".join(parts)

    async def chunks(self, response: WireResponse) -> AsyncGenerator[bytes, None]:
        """The body's bytes as they arrive, each wait bounded by ``timeouts.idle`` (a body
        passed on as it came; ``read`` and ``events`` read without it: one generator layer
        less on every answer read whole and on every chunk of a stream)."""
        with self.errors("idle"), IdleTimer(self.timeouts.idle) as timer:
            while data := await _timed_read(response, timer):
                yield data

    async def events(
        self, response: WireResponse, parse: Callable[[Event], Any]
    ) -> AsyncGenerator[Any, None]:
        """The body's SSE events as they complete, each turned into an item by ``parse``
        (``None``: skip it; ``DONE``: the stream is over). One generator per stream, with the
        idle timer and the error boundary around the whole of it, not around each event."""
        decoder = SSEDecoder()
        with self.errors("idle"), IdleTimer(self.timeouts.idle) as timer:
            while True:
                timer.wait()
                raw = await response.read()
                timer.done()
                for event in decoder.feed(raw) if raw else decoder.flush():
                    item = parse(event)
                    if item is DONE:
                        return
                    if item is not None:
                        yield item
                if not raw:
                    return

    def json(self, raw: bytes) -> Any:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise errors.UpstreamMalformed(
                f"The upstream '{self.name}' answered invalid JSON."
            ) from exc
        if not writable(raw, value):  # read, but not writable on (``proxy.jsondepth``)
            raise errors.UpstreamMalformed(f"The upstream '{self.name}' answered JSON {TOO_DEEP}.")
        return value

    async def _status_error(self, response: WireResponse) -> ProxyError:
        raw = b""
        with IdleTimer(self.timeouts.idle) as timer:
            while len(raw) < MAX_ERROR_BODY and (part := await _timed_read(response, timer)):
                raw += part
        raw = raw[:MAX_ERROR_BODY]
        error = failures.status_error(raw, response.status, response.reason)
        if response.status in (429, 503):
            for name in ("retry-after", "retry-after-ms"):
                value = response.headers.get(name)
                if value:
                    error.headers[name] = value
        return error

    def errors(self, phase: str) -> _Boundary:
        """The one boundary: foreign exceptions become ``ProxyError``s, and every error that
        leaves, whatever built it, is scrubbed of secrets (the same object, its fields and
        headers rewritten: it has not been seen by anyone yet)."""
        return _Boundary(self, phase)

    def translate(self, exc: Exception, phase: str) -> ProxyError | None:
        name = self.name
        if isinstance(
            exc,
            aiohttp.ClientConnectorError
            | aiohttp.ConnectionTimeoutError  # also a TimeoutError: before the ones below
            | httpx.ConnectError
            | httpx.ConnectTimeout
            | httpx.PoolTimeout,
        ):
            return errors.UpstreamUnreachable(
                f"The upstream '{name}' could not be reached: {_reason(exc)}."
            )
        if isinstance(exc, TimeoutError) and phase == "first_byte":
            return errors.UpstreamTimeout(
                f"The upstream '{name}' sent no response within {self.timeouts.first_byte:g} s."
            )
        if isinstance(exc, TimeoutError):
            return errors.UpstreamIdleTimeout(
                f"The upstream '{name}' was silent for more than {self.timeouts.idle:g} s."
            )
        if isinstance(exc, EventTooLarge):
            return errors.UpstreamMalformed(
                f"The upstream '{name}' sent an event of more than {MAX_EVENT} bytes."
            )
        if isinstance(exc, aiohttp.ClientResponseError | httpx.RemoteProtocolError) and not (
            isinstance(exc, httpx.RemoteProtocolError) and _stale(exc)
        ):
            return errors.UpstreamMalformed(
                f"The upstream '{name}' answered something that is not valid HTTP: {_reason(exc)}."
            )
        if isinstance(exc, aiohttp.ClientError | httpx.HTTPError | OSError):
            return errors.UpstreamConnectionError(
                f"The connection to the upstream '{name}' failed: {_reason(exc)}."
            )
        return None


class _Boundary:
    """``HTTPClient.errors``: a plain context manager (a generator-based one costs a few
    microseconds more, and one is entered for each request and stream)."""

    __slots__ = ("client", "phase")

    def __init__(self, client: HTTPClient, phase: str) -> None:
        self.client = client
        self.phase = phase

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: Any
    ) -> None:
        if exc is None or not isinstance(exc, Exception):
            return  # no error, or a cancellation / generator exit: not ours to translate
        error: ProxyError | None = None
        try:
            if isinstance(exc, ProxyError):
                raise self.client.scrubber.error(exc) from _untraced(exc.__cause__)
            error = self.client.translate(exc, self.phase)
            if error is not None:
                raise self.client.scrubber.error(error) from _untraced(exc)
        finally:
            # This frame goes into the raised error's traceback: holding the errors too, it
            # would make a reference cycle of every failed request (its frames, its body),
            # left for the cyclic collector (proxy/heap.py).
            del exc, traceback, error


def _untraced(cause: BaseException | None) -> BaseException | None:
    """``cause`` and the errors behind it without their tracebacks. They are only the
    translated error's explanation (its type and message; the proxy logs no tracebacks of
    upstream failures), while their frames, each holding its caller's, reach the request's
    body; and aiohttp keeps a failed connection's error in a local of a frame of its
    traceback: a reference cycle per failed request, its body with it, until the cyclic
    collector came (proxy/heap.py)."""
    seen: set[int] = set()
    pending = [cause]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        error.__traceback__ = None
        pending += (error.__cause__, error.__context__)
    return cause


DONE = object()  # what a ``parse`` function returns for the end-of-stream marker


async def _timed_read(response: WireResponse, timer: IdleTimer) -> bytes:
    """The body's next bytes (``b""`` at its end), the wait on them watched by ``timer``."""
    timer.wait()
    data = await response.read()
    timer.done()
    return data


def _stale(exc: Exception) -> bool:
    """Did the request fail because the connection was closed under it, before any answer?"""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    if isinstance(exc, aiohttp.ClientOSError):
        # "Can not write request body" has no errno of its own: the transport was already
        # closing under the write (the upstream closed it), which its cause says.
        cause = exc.__cause__
        return exc.errno in (errno.ECONNRESET, errno.EPIPE) or isinstance(
            cause, ConnectionResetError | BrokenPipeError
        )
    if isinstance(exc, httpx.RemoteProtocolError):
        return "without sending" in str(exc)
    return isinstance(exc, httpx.ReadError | httpx.WriteError)


def _reason(exc: BaseException) -> str:
    text = str(exc).rstrip(".")
    if text:
        return text
    if isinstance(exc, httpx.ReadError | httpx.WriteError | ConnectionError):
        return "the connection was reset"  # these come with no text of their own
    return type(exc).__name__
