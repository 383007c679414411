"""The upstream HTTP client (``proxy.upstreams.http`` over ``proxy.upstreams.wire``: aiohttp),
against fake servers on real sockets: body framings, pieces handed over as they arrive,
keep-alive reuse and expiry, closing an unread body, the pool limit, timeouts, broken
servers, TLS."""

from __future__ import annotations

import asyncio
import errno
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import pytest
import trustme
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import DEFAULT_CHUNK_SIZE

from proxy.errors import ProxyError
from proxy.secrets import Scrubber
from proxy.settings import HTTPUpstream, Pool
from proxy.upstreams.http import HTTPClient, _stale
from proxy.upstreams.wire import AiohttpWire
from tests.fake_upstream import Recorded, Reply, serve_fake
from tests.helpers import free_port


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


@asynccontextmanager
async def client_for(
    url: str,
    pool: dict[str, Any] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **timeouts: float,
) -> AsyncIterator[HTTPClient]:
    wire = AiohttpWire(Pool(**(pool or {})), ssl_context)
    config = HTTPUpstream(type="openai", base_url=url, timeouts=timeouts)
    try:
        yield HTTPClient("up", config, wire, Scrubber())
    finally:
        await wire.aclose()


async def fetch(url: str, **timeouts: float) -> bytes:
    async with client_for(url, **timeouts) as http:
        response = await http.post(http.url("/x"), b'{"x":1}')
        try:
            return await http.read(response)
        finally:
            await response.aclose()


def data(event: Any) -> bytes:
    return bytes(event.data)


async def chunked(request: Recorded, reply: Reply) -> None:
    await reply.start(200, {"content-type": "text/plain"})
    for part in (b"one ", b"two ", b"three"):
        await reply.send(part)
        await asyncio.sleep(0.01)
    await reply.end()


async def length(request: Recorded, reply: Reply) -> None:
    await reply.json(200, {"ok": True, "echo": request.body.decode()})


async def until_close(request: Recorded, reply: Reply) -> None:
    reply.writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n")
    for part in (b"a", b"b", b"c"):
        reply.writer.write(part)
        await reply.writer.drain()
        await asyncio.sleep(0.01)
    reply.writer.close()


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (chunked, b"one two three"),
        (length, b'{"ok": true, "echo": "{\\"x\\":1}"}'),
        (until_close, b"abc"),
    ],
    ids=["chunked", "content-length", "close-delimited"],
)
def test_body_framings(handler: Any, expected: bytes) -> None:
    with serve_fake(handler) as fake:
        assert run(fetch(fake.url)) == expected
    assert fake.requests[0].headers["content-length"] == "7"
    assert fake.requests[0].path == "/v1/x"
    assert fake.requests[0].headers["accept-encoding"] == "identity"


def test_events_are_handed_over_as_they_arrive() -> None:
    async def paced(request: Recorded, reply: Reply) -> None:
        await reply.start()
        for n in range(4):
            await reply.send(f"data: {n}\n\n".encode())
            await asyncio.sleep(0.2)
        await reply.end()

    async def go(url: str) -> list[float]:
        async with client_for(url) as http:
            response = await http.post(http.url("/x"), b"{}")
            started = time.monotonic()
            times = [time.monotonic() - started async for _ in http.events(response, data)]
            await response.aclose()
            return times

    with serve_fake(paced) as fake:
        times = run(go(fake.url))
    assert len(times) == 4
    assert times[0] < 0.1 and times[-1] > 0.5  # each as it came, not all at the end


def _counting(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> list[int]:
    """Count the calls of ``cls.name`` (still calling it)."""
    calls: list[int] = []
    original = getattr(cls, name)

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


def test_reading_resumes_only_after_a_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp's reader asks its protocol to resume reading after every chunk it hands out;
    ``wire._Handler`` lets that through only when reading was paused. A fast stream of small
    chunks never pauses: no resume reaches aiohttp (with its own handler, one per chunk)."""
    resumes = _counting(monkeypatch, ResponseHandler, "resume_reading")
    pauses = _counting(monkeypatch, ResponseHandler, "pause_reading")

    async def small(request: Recorded, reply: Reply) -> None:
        await reply.start()
        for n in range(200):
            await reply.send(b"data: %d\n\n" % n)
        await reply.end()

    async def go(url: str) -> list[bytes]:
        async with client_for(url) as http:
            response = await http.post(http.url("/x"), b"{}")
            got = [item async for item in http.events(response, data)]
            await response.aclose()
            return got

    with serve_fake(small) as fake:
        got = run(go(fake.url))
    assert got == [b"%d" % n for n in range(200)]
    assert not pauses and not resumes


def test_a_paused_read_resumes_and_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backpressure still works: 4 MiB sent at once to a reader that waits first fills
    aiohttp's buffer past its high-water mark, reading pauses, and each resume that follows is
    let through; every byte arrives, in order."""
    resumes = _counting(monkeypatch, ResponseHandler, "resume_reading")
    pauses = _counting(monkeypatch, ResponseHandler, "pause_reading")
    blob = b"".join(b"%08d" % n for n in range(512 * 1024))  # 4 MiB, every offset distinct

    async def big(request: Recorded, reply: Reply) -> None:
        await reply.start(headers={"content-type": "application/octet-stream"})
        await reply.send(blob, piece=4096)
        await reply.end()

    async def go(url: str) -> bytes:
        async with client_for(url) as http:
            response = await http.post(http.url("/x"), b"{}")
            await asyncio.sleep(0.5)  # let the buffer fill up before reading
            parts = []
            async with asyncio.timeout(20):  # a resume skipped wrongly would hang here
                async for part in http.chunks(response):
                    parts.append(part)
                    await asyncio.sleep(0)
            await response.aclose()
            return b"".join(parts)

    with serve_fake(big) as fake:
        assert run(go(fake.url)) == blob
    assert pauses and resumes  # it paused, and every resume after a pause went through


def test_a_pause_on_the_count_of_chunks_holds_nothing_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiohttp pauses reading once more chunks than its high-water count are buffered. Ended
    at the end of a read, that pause leaves its parser's own pause flag set past the resume,
    and the next read is held back until a later resume feeds it on. An outside review found
    a body whose end then waited for bytes that never came (with the upstream closing: a
    complete answer reported broken). Here: one write of one chunk more than the high-water
    count, nothing read yet, then the body's end in a later write on a kept-open connection."""
    pauses = _counting(monkeypatch, ResponseHandler, "pause_reading")
    count = max(4, DEFAULT_CHUNK_SIZE // 16) + 1  # StreamReader's _high_water_chunks, + 1
    tail = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"

    async def go() -> bytes:
        served = asyncio.Event()

        async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)  # the body, b"{}"
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                writer.write(b"1\r\nx\r\n" * count)
                await writer.drain()
                await asyncio.sleep(0.5)
                writer.write(tail)
                await writer.drain()
                await reader.read()  # the connection stays open until the client closes it
            finally:
                writer.close()
                served.set()

        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with client_for(f"http://127.0.0.1:{port}") as http:
                response = await http.post(http.url("/x"), b"{}")
                await asyncio.sleep(0.3)  # the chunks arrive while nothing is read
                parts = []
                async with asyncio.timeout(5):
                    while part := await response.read():
                        parts.append(part)
                await response.aclose()
            await asyncio.wait_for(served.wait(), 5)
            return b"".join(parts)
        finally:
            server.close()

    assert run(go()) == b"x" * count + b"hello world"
    assert pauses  # the count of chunks did pause reading: the case this test is about


def test_keep_alive_reuses_one_connection_and_expires() -> None:
    async def go(url: str, pause: float) -> None:
        async with client_for(url, pool={"keepalive_expiry": 0.3}) as http:
            for _ in range(3):
                response = await http.post(http.url("/x"), b"{}")
                await http.read(response)
                await response.aclose()
                await asyncio.sleep(pause)

    for pause, connections in ((0.0, 1), (0.6, 3)):
        with serve_fake(length) as fake:
            run(go(fake.url, pause))
            assert len(fake.requests) == 3
            assert fake.connections == connections, pause


def test_unread_body_closes_the_connection() -> None:
    async def endless(request: Recorded, reply: Reply) -> None:
        await reply.start()
        while not reply.peer_closed.is_set():
            await reply.send(b"data: x\n\n")
            await asyncio.sleep(0.01)

    async def go(url: str) -> None:
        async with client_for(url) as http:
            response = await http.post(http.url("/x"), b"{}")
            async for _ in http.events(response, data):
                break  # walk away mid-body
            await response.aclose()

    with serve_fake(endless) as fake:
        run(go(fake.url))
        deadline = time.monotonic() + 3
        while not fake.closed_at and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.closed_at


def test_pool_limit() -> None:
    async def go(url: str) -> None:
        async with client_for(url, pool={"max_connections": 1}, connect=0.3) as http:
            held = await http.post(http.url("/x"), b"{}")
            with pytest.raises(ProxyError) as caught:
                await http.post(http.url("/x"), b"{}")
            assert caught.value.code == "upstream_unreachable"
            await held.aclose()  # released: the next one gets a connection
            response = await http.post(http.url("/x"), b"{}")
            assert await http.read(response) == b"{}"
            await response.aclose()

    async def answers(request: Recorded, reply: Reply) -> None:
        if len(fake.requests) == 1:  # the first holds its connection: a body that goes on
            await reply.start()
            await reply.until_closed(10)
        else:
            await reply.json(200, {})

    with serve_fake(answers) as fake:
        run(go(fake.url))


def test_idle_and_first_byte_timeouts() -> None:
    async def headers_then_silence(request: Recorded, reply: Reply) -> None:
        await reply.start()
        await reply.until_closed(10)

    async def silence(request: Recorded, reply: Reply) -> None:
        await reply.until_closed(10)

    async def body(url: str) -> tuple[str | None, float]:
        async with client_for(url, first_byte=5, idle=0.3) as http:
            response = await http.post(http.url("/x"), b"{}")
            started = time.monotonic()
            with pytest.raises(ProxyError) as caught:
                async for _ in http.events(response, data):
                    pass
            await response.aclose()
            return caught.value.code, time.monotonic() - started

    async def head(url: str) -> tuple[str | None, float]:
        async with client_for(url, first_byte=0.3, idle=5) as http:
            started = time.monotonic()
            with pytest.raises(ProxyError) as caught:
                await http.post(http.url("/x"), b"{}")
            return caught.value.code, time.monotonic() - started

    with serve_fake(headers_then_silence) as fake:
        code, took = run(body(fake.url))
        assert code == "upstream_idle_timeout" and 0.25 < took < 2
    with serve_fake(silence) as fake:
        code, took = run(head(fake.url))
        assert code == "upstream_timeout" and 0.25 < took < 2


async def garbage(request: Recorded, reply: Reply) -> None:
    reply.writer.write(b"SSH-2.0-nope\r\n\r\n")
    reply.writer.close()


async def close_before_headers(request: Recorded, reply: Reply) -> None:
    reply.writer.close()


async def close_mid_body(request: Recorded, reply: Reply) -> None:
    await reply.start()
    await reply.send(b"data: x\n\n")
    reply.writer.close()


@pytest.mark.parametrize(
    ("handler", "code"),
    [
        (garbage, "upstream_malformed"),
        (close_before_headers, "upstream_connection_error"),
        (close_mid_body, "upstream_connection_error"),
    ],
    ids=["garbage", "close-before-headers", "close-mid-body"],
)
def test_broken_servers(handler: Callable[..., Any], code: str) -> None:
    with serve_fake(handler) as fake, pytest.raises(ProxyError) as caught:
        run(fetch(fake.url))
    assert caught.value.code == code


def test_refused_connection() -> None:
    with pytest.raises(ProxyError) as caught:
        run(fetch(f"http://127.0.0.1:{free_port()}/v1"))
    assert caught.value.code == "upstream_unreachable"


def test_tls() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)

    async def go() -> bytes:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecure")
            await writer.drain()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
        url = f"https://localhost:{server.sockets[0].getsockname()[1]}/v1"
        async with server:
            async with client_for(url, ssl_context=trusting) as http:
                response = await http.post(http.url("/x"), b"{}")
                body = await http.read(response)
                await response.aclose()
            with pytest.raises(ProxyError) as caught:  # an untrusted certificate is refused
                await fetch(url)
            assert caught.value.code == "upstream_unreachable"
            return body

    assert run(go()) == b"secure"


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "stale"),
    [
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientOSError(errno.ECONNRESET, "reset"), True),
        (aiohttp.ClientOSError(errno.EPIPE, "broken pipe"), True),
        # aiohttp's body write on a transport the upstream was closing: no errno, the cause says
        (
            _caused(
                aiohttp.ClientOSError(None, "Can not write request body for http://u/v1"),
                aiohttp.ClientConnectionResetError("Cannot write to closing transport"),
            ),
            True,
        ),
        (aiohttp.ClientOSError(None, "Can not write request body for http://u/v1"), False),
        (aiohttp.ClientOSError(errno.ECONNREFUSED, "refused"), False),
        (aiohttp.ClientPayloadError("bad"), False),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), True),
        (httpx.RemoteProtocolError("illegal status line"), False),
    ],
)
def test_which_failures_are_the_stale_keepalive_race(exc: Exception, stale: bool) -> None:
    """Failures before any byte of answer, on a connection the upstream closed as it was reused,
    are sent once more; others are the upstream's."""
    assert _stale(exc) is stale
