"""The wire under every HTTP upstream: one small seam, ``Wire.send``, and two implementations.

- ``AiohttpWire`` (the default): aiohttp's connection pool and C parser, used directly. It
  handles what a hand-written transport got wrong (interim ``1xx`` responses, pool slots under
  cancellation, head limits) and costs less CPU than our own transport did: 75-85 µs per
  request against 100 µs, where httpx over the same aiohttp (``httpx-aiohttp``) costs 165 µs
  and httpx's own transport 1,350 µs (README "Performance", ``bench/``).
- ``HttpxWire``: any ``httpx`` transport. Tests pass an ``httpx.MockTransport`` through
  ``create_app(settings, transport=...)``; ``pool.transport: httpx`` uses httpcore.

A response's body is read with ``read()``: whatever bytes have arrived, at once, however few;
``b""`` at its end. The caller owns the response and must ``aclose()`` it: closing a body
that was not read to its end closes the connection, which is what tells the upstream to stop.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any, Protocol, cast

import aiohttp
import httpx
from aiohttp.client_proto import ResponseHandler

from proxy.settings import Pool, Timeouts

Body = bytes | AsyncIterable[bytes]


class WireResponse(Protocol):
    status: int
    reason: str
    headers: Mapping[str, str]  # case-insensitive

    async def read(self) -> bytes:
        """The next bytes of the body as they arrive; ``b""`` at its end."""
        ...

    async def aclose(self) -> None: ...


class Wire(Protocol):
    async def send(
        self,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        timeouts: Timeouts,
        method: str = "POST",
    ) -> WireResponse:
        """Send ``body`` (POST unless ``method`` says otherwise); return once the response
        head is in (no timeout of its own for that: the caller bounds it)."""
        ...

    async def aclose(self) -> None: ...


class _Handler(ResponseHandler):
    """aiohttp's protocol for one upstream connection, less a cost paid on every chunk.

    Its ``StreamReader`` calls ``resume_reading`` after each HTTP chunk it hands out whenever
    its buffer is below the low-water mark, paused or not, and each call feeds the parser an
    empty buffer and resumes the socket: four Python calls per chunk of a stream, which made
    a streamed chunk cost more through aiohttp than through the hand-written transport.

    Until a response first pauses, nothing is left to resume: the parser keeps bytes back
    only once ``pause_reading`` paused it (the client's parser queues no messages, and we
    inflate nothing: ``auto_decompress=False``). After a pause, every resume goes through
    until the next response, as aiohttp does it: a pause on the count of buffered chunks
    (aiohttp's ``end_http_chunk_receiving``) can leave the parser's own pause flag set past
    the resume, and the next read's bytes are then held back until a later resume feeds them
    on (skipped, the end of such a body waited for bytes that never came; an outside review
    found it, ``tests/test_upstream_client.py`` holds it)."""

    _paused_once = False  # this response's reading paused: resumes go through until the next

    def pause_reading(self) -> None:
        self._paused_once = True
        super().pause_reading()

    def resume_reading(self, resume_parser: bool = True) -> None:
        if self._paused_once or self._reading_paused:
            super().resume_reading(resume_parser)

    def set_response_params(self, **params: Any) -> None:
        self._paused_once = False  # a new response: a new parser, nothing held back
        super().set_response_params(**params)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's pool reuses any idle connection that is still open, even one on which the
    upstream sent bytes nobody asked for (say, a second response after a complete one): the
    next request on it would read them as its answer, another client's. A connection that
    received anything while idle is closed instead of reused (``should_close`` covers
    unsolicited messages, unparsed bytes and errors). And one closed with unsent bytes is
    aborted (``_release``). Its connections speak through ``_Handler``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # aiohttp's own protocol factory, as it builds it, with our protocol in its place.
        self._factory = cast(
            "functools.partial[ResponseHandler]", functools.partial(_Handler, loop=self._loop)
        )

    async def _get(self, key: Any, traces: Any) -> Any:
        while True:
            connection = await super()._get(key, traces)
            if connection is None:
                return None
            protocol = connection.protocol
            if protocol is not None and not protocol.should_close:
                return connection
            connection.close()

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        # A connection closed with request bytes still unsent (an upload the upstream stopped
        # reading) is aborted: a graceful close would wait, holding the socket, for a reader
        # that may never come.
        transport = protocol.transport
        closing = should_close or protocol.should_close
        if closing and transport is not None and transport.get_write_buffer_size():
            protocol.abort()
        super()._release(key, protocol, should_close=should_close)


class _AiohttpResponse:
    __slots__ = ("_response", "headers", "reason", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.reason = response.reason or ""
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        return await self._response.content.readany()

    async def aclose(self) -> None:
        if self._response.content.is_eof():
            self._response.release()  # read to its end: the connection goes back to the pool
        else:
            self._response.close()  # unfinished: closing is what stops the upstream


class AiohttpWire:
    """aiohttp's client; see the module docstring. Build it inside the running loop."""

    def __init__(self, pool: Pool, ssl_context: ssl.SSLContext | None = None) -> None:
        connector = _Connector(
            limit=pool.max_connections,
            keepalive_timeout=pool.keepalive_expiry,
            ssl=ssl_context or ssl.create_default_context(),
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # one client for all users: keep no cookies
            # We ask for identity; never inflate what we did not ask for (and ``_Handler``'s
            # resumes rely on it: an inflating reader resumes with work still pending).
            auto_decompress=False,
            trust_env=pool.trust_env,  # HTTP(S)_PROXY and NO_PROXY from the environment
            skip_auto_headers=("User-Agent",),
            # The response head's bounds (aiohttp's defaults, said out loud): 8 KB a line,
            # 128 headers. Past them the upstream gets a 502, not our memory.
            max_line_size=8190,
            max_field_size=8190,
            max_headers=128,
        )

    async def send(
        self,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        timeouts: Timeouts,
        method: str = "POST",
    ) -> _AiohttpResponse:
        response = await self.session.request(
            method,
            url,
            data=body,
            headers=headers,
            timeout=_client_timeout(timeouts),
            allow_redirects=False,
        )
        return _AiohttpResponse(response)

    async def aclose(self) -> None:
        await self.session.close()


@functools.lru_cache(maxsize=256)
def _client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for an upstream's (built once: a request should not pay for it).
    Only the connection's own: the wait for the answer is bounded by the caller."""
    return aiohttp.ClientTimeout(
        total=None, connect=timeouts.connect, sock_connect=timeouts.connect
    )


class _HttpxResponse:
    __slots__ = ("_reads", "_response", "headers", "reason", "status")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.reason = response.reason_phrase
        self.headers: Mapping[str, str] = response.headers
        # A response made whole in memory (an httpx.MockTransport one) is already read.
        self._reads: AsyncIterator[bytes] = (
            _once(response.content) if response.is_stream_consumed else response.aiter_raw()
        )

    async def read(self) -> bytes:
        return await anext(self._reads, b"")

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxWire:
    """Any httpx transport under the same seam (tests' MockTransport, httpcore)."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport

    async def send(
        self,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        timeouts: Timeouts,
        method: str = "POST",
    ) -> _HttpxResponse:
        timeout = {"connect": timeouts.connect, "read": None, "write": timeouts.write}
        request = httpx.Request(
            method,
            url,
            headers=headers,
            content=body,
            extensions={"timeout": {**timeout, "pool": timeouts.connect}},
        )
        response = await self.transport.handle_async_request(request)
        response.request = request
        return _HttpxResponse(response)

    async def aclose(self) -> None:
        await self.transport.aclose()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def build_wire(pool: Pool, transport: httpx.AsyncBaseTransport | None = None) -> Wire:
    """The wire the config asks for (call inside the running loop)."""
    if transport is not None:
        return HttpxWire(transport)
    if pool.transport == "httpx":
        limits = httpx.Limits(
            max_connections=pool.max_connections, keepalive_expiry=pool.keepalive_expiry
        )
        return HttpxWire(httpx.AsyncHTTPTransport(limits=limits, trust_env=pool.trust_env))
    return AiohttpWire(pool)


class SharedWire:
    """The app's one wire, built when the lifespan starts (aiohttp needs the running loop) and
    closed when it ends; the upstreams, built before, reach it through this."""

    def __init__(self, pool: Pool, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.pool = pool
        self.transport = transport
        self._wire: Wire | None = None

    async def start(self) -> None:
        self._wire = build_wire(self.pool, self.transport)

    @property
    def is_open(self) -> bool:
        return self._wire is not None

    async def send(
        self,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        timeouts: Timeouts,
        method: str = "POST",
    ) -> WireResponse:
        if self._wire is None:
            raise RuntimeError("the upstream wire is not open (the app's lifespan opens it)")
        return await self._wire.send(url, headers, body, timeouts, method)

    async def aclose(self) -> None:
        if self._wire is not None:
            await self._wire.aclose()
            self._wire = None
