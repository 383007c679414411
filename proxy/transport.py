"""A fast HTTP/1.1 transport for httpx: asyncio protocol + httptools (the C parser uvicorn uses).

httpx stays the client API; this replaces what is under it. httpx's default transport
(httpcore + h11, pure Python) costs about 1 ms of CPU per proxied request and tens of
microseconds per streamed chunk on the machines we measure on; this one a fraction of that
(``bench/``, README "Performance"). It does exactly what the proxy needs: HTTP/1.1 with
keep-alive, Content-Length, chunked and close-delimited bodies, TLS, a bounded pool, and
httpx's timeouts and exceptions, so callers cannot tell the difference. It does not do HTTP/2,
proxies from the environment, or ``Expect: 100-continue`` (``upstream_transport: httpx`` in the
config falls back to httpx's own transport for those).

Timeouts come from ``request.extensions["timeout"]`` and ``read`` is looked up at every wait,
so a caller may change it once the headers are in (the proxy switches to its idle timeout).
Data that has arrived is handed over at once, however little; nothing waits to fill a buffer.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httptools
import httpx

_HIGH_WATER = 256 * 1024  # stop reading from a fast upstream while this much is unconsumed
_Key = tuple[str, str, int]


class _Connection(asyncio.Protocol):
    """One upstream connection; one request at a time on it."""

    def __init__(self, pool: _Pool, key: _Key) -> None:
        self.pool = pool
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.active = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] = self.loop.create_future()
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.done = False  # the response body is complete
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.keep_alive = False
        self.until_eof = False  # no length and not chunked: the body ends when the peer closes
        self.paused = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.active:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP from the upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if not self.active or self.done:
            return
        if not self.head.done():
            if isinstance(exc, OSError):
                self._fail(httpx.ReadError(str(exc) or "the connection was reset"))
            else:
                self._fail(
                    httpx.RemoteProtocolError("Server disconnected without sending a response.")
                )
        elif self.until_eof and exc is None:
            self.done = True
            self._wake()
        elif isinstance(exc, OSError):
            self._fail(httpx.ReadError(str(exc) or "the connection was reset"))
        else:
            self._fail(
                httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            )

    # -- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        names = {name.lower() for name, _ in self.headers}
        self.until_eof = (
            b"content-length" not in names
            and b"transfer-encoding" not in names
            and self.status not in (204, 304)
            and not 100 <= self.status < 200
        )
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.done = True
        self._wake()

    # -- helpers ------------------------------------------------------------------------------

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        self.error = error
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: no "never retrieved" warning if nobody waits
        self._wake()

    def usable(self, now: float, expiry: float) -> bool:
        return not self.closed and (expiry <= 0 or now - self.idle_since < expiry)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
        self.pool.forget(self)

    async def send(self, request: httpx.Request) -> None:
        """Write the request and wait for the response head."""
        self._reset()
        self.active = True
        url = request.url
        target = url.raw_path or b"/"
        lines = [request.method.encode(), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            lines += [name, b": ", value, b"\r\n"]
        lines.append(b"\r\n")
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        assert self.transport is not None
        if body and b"content-length" not in {n.lower() for n, _ in request.headers.raw}:
            lines.insert(-1, b"content-length: %d\r\n" % len(body))
        self.transport.write(b"".join(lines) + body)
        timeout = _timeout(request, "read")
        try:
            await asyncio.wait_for(asyncio.shield(self.head), timeout)
        except TimeoutError:
            raise httpx.ReadTimeout("timed out waiting for the response headers") from None

    async def read(self, request: httpx.Request) -> AsyncIterator[bytes]:
        """The body as it arrives; a piece is never held back to wait for more."""
        while True:
            if self.body:
                data = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
                self.body.clear()
                self.buffered = 0
                if self.paused and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                yield data
                continue
            if self.error is not None:
                raise self.error
            if self.done:
                return
            self.waiter = self.loop.create_future()
            timeout = _timeout(request, "read")  # looked up now: the caller may have changed it
            timer = self.loop.call_later(timeout, _expire, self.waiter) if timeout else None
            try:
                await self.waiter
            finally:
                if timer is not None:
                    timer.cancel()
                self.waiter = None


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("timed out waiting for the upstream"))


def _timeout(request: httpx.Request, name: str) -> float | None:
    value = request.extensions.get("timeout", {}).get(name)
    return float(value) if value is not None else None


class _Body(httpx.AsyncByteStream):
    """A response body; closing it returns the connection to the pool when that is safe."""

    def __init__(self, connection: _Connection, request: httpx.Request) -> None:
        self.connection = connection
        self.request = request
        self.released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for data in self.connection.read(self.request):
            yield data

    async def aclose(self) -> None:
        if self.released:
            return
        self.released = True
        connection = self.connection
        connection.active = False
        if connection.done and connection.error is None and connection.keep_alive:
            connection.pool.release(connection)
        else:  # unread body (a client went away): closing is what stops the upstream
            connection.close()
            connection.pool.wake()


class _Pool:
    """Idle keep-alive connections per (scheme, host, port), and a cap on all connections."""

    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext) -> None:
        self.max_connections = limits.max_connections or 1 << 30
        self.max_idle = (
            limits.max_keepalive_connections
            if limits.max_keepalive_connections is not None
            else 1 << 30
        )
        self.expiry = limits.keepalive_expiry or 0.0
        self.ssl_context = ssl_context
        self.idle: dict[_Key, list[_Connection]] = {}
        self.live: set[_Connection] = set()
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, key: _Key, request: httpx.Request) -> _Connection:
        loop = asyncio.get_running_loop()
        while True:
            idle = self.idle.get(key)
            now = loop.time()
            while idle:
                connection = idle.pop()
                if connection.usable(now, self.expiry):
                    return connection
                connection.close()
            if len(self.live) < self.max_connections:
                return await self._connect(key, request)
            waiter = loop.create_future()
            self.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, _timeout(request, "pool"))
            except TimeoutError:
                raise httpx.PoolTimeout("no upstream connection became free in time") from None
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)

    async def _connect(self, key: _Key, request: httpx.Request) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        connection = _Connection(self, key)
        self.live.add(connection)
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: connection,
                    host,
                    port,
                    ssl=self.ssl_context if scheme == "https" else None,
                    server_hostname=host if scheme == "https" else None,
                ),
                _timeout(request, "connect"),
            )
        except TimeoutError:
            self.forget(connection)
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            self.forget(connection)
            raise httpx.ConnectError(exc.strerror or str(exc) or type(exc).__name__) from None
        return connection

    def release(self, connection: _Connection) -> None:
        idle = self.idle.setdefault(connection.key, [])
        if connection.closed or len(idle) >= self.max_idle:
            connection.close()
        else:
            connection.idle_since = connection.loop.time()
            idle.append(connection)
        self.wake()

    def forget(self, connection: _Connection) -> None:
        if connection in self.live:
            self.live.discard(connection)
            idle = self.idle.get(connection.key)
            if idle and connection in idle:
                idle.remove(connection)
            self.wake()

    def wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for connection in list(self.live):
            connection.close()


class FastTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` over ``_Pool``; see the module docstring."""

    def __init__(
        self, limits: httpx.Limits | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.pool = _Pool(limits or httpx.Limits(), ssl_context or ssl.create_default_context())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        connection = await self.pool.acquire(key, request)
        try:
            await connection.send(request)
        except BaseException:
            connection.active = False
            connection.close()
            raise
        return httpx.Response(
            connection.status,
            headers=connection.headers,
            stream=_Body(connection, request),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        self.pool.close()


def build_transport(kind: str, limits: httpx.Limits) -> Any:
    """The upstream transport named in the config: ``fast`` (ours) or ``httpx`` (httpcore)."""
    if kind == "httpx":
        return httpx.AsyncHTTPTransport(limits=limits)
    return FastTransport(limits)
