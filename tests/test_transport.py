"""The proxy's own HTTP/1.1 transport for httpx, against fake servers on real sockets."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trustme

from proxy.transport import FastTransport
from tests.fake_upstream import Recorded, Reply, serve_fake


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def fetch(
    url: str, transport: FastTransport, *, timeout: httpx.Timeout | None = None
) -> tuple[int, bytes, list[bytes]]:
    async with httpx.AsyncClient(
        transport=transport, timeout=timeout or httpx.Timeout(5)
    ) as client:
        async with client.stream("POST", url, content=b'{"x":1}') as response:
            parts = [part async for part in response.aiter_raw()]
        return response.status_code, b"".join(parts), parts


def handler_of(body: Callable[[Recorded, Reply], Awaitable[None]]) -> Any:
    return body


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
        status, body, _ = run(fetch(f"{fake.url}/x", FastTransport()))
    assert (status, body) == (200, expected)
    assert fake.requests[0].headers["content-length"] == "7"
    assert fake.requests[0].path == "/v1/x"


def test_pieces_are_handed_over_as_they_arrive() -> None:
    with serve_fake(chunked) as fake:
        _, _, parts = run(fetch(f"{fake.url}/x", FastTransport()))
    assert parts == [b"one ", b"two ", b"three"]


def test_keep_alive_reuses_one_connection() -> None:
    async def three(url: str) -> None:
        transport = FastTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                assert (await client.post(url, content=b"{}")).status_code == 200
            assert len(transport.pool.live) == 1

    with serve_fake(length) as fake:
        run(three(f"{fake.url}/x"))
        assert len(fake.requests) == 3
        assert fake.closed_at == [] or len(fake.closed_at) == 1  # one connection, closed at the end


def test_unread_body_closes_the_connection() -> None:
    async def go(url: str) -> None:
        transport = FastTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            async with client.stream("POST", url, content=b"{}") as response:
                async for _ in response.aiter_raw():
                    break  # walk away mid-body
            assert not transport.pool.live

    async def endless(request: Recorded, reply: Reply) -> None:
        await reply.start()
        while not reply.peer_closed.is_set():
            await reply.send(b"data: x\n\n")
            await asyncio.sleep(0.01)

    with serve_fake(endless) as fake:
        run(go(f"{fake.url}/x"))
        deadline = time.monotonic() + 3
        while not fake.closed_at and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.closed_at


def test_pool_limit_and_pool_timeout() -> None:
    async def go(url: str) -> None:
        transport = FastTransport(httpx.Limits(max_connections=1))
        timeout = httpx.Timeout(5, pool=0.2)
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
            async with client.stream("POST", url, content=b"{}"):
                with pytest.raises(httpx.PoolTimeout):
                    await client.post(url, content=b"{}")
            # released: the next one gets the connection
            assert (await client.post(url, content=b"{}")).status_code == 200

    async def slowish(request: Recorded, reply: Reply) -> None:
        await reply.json(200, {})

    with serve_fake(slowish) as fake:
        run(go(f"{fake.url}/x"))


def test_idle_connection_closed_by_server_is_not_reused() -> None:
    async def go(url: str) -> None:
        transport = FastTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.post(url, content=b"{}")).status_code == 200
            await asyncio.sleep(0.2)  # the server closes it meanwhile
            assert not transport.pool.live
            assert (await client.post(url, content=b"{}")).status_code == 200

    async def closes_after(request: Recorded, reply: Reply) -> None:
        await reply.json(200, {})
        await asyncio.sleep(0.05)
        reply.writer.close()

    with serve_fake(closes_after) as fake:
        run(go(f"{fake.url}/x"))
        assert len(fake.requests) == 2


def test_keepalive_expiry() -> None:
    async def go(url: str) -> None:
        transport = FastTransport(httpx.Limits(keepalive_expiry=0.1))
        async with httpx.AsyncClient(transport=transport) as client:
            await client.post(url, content=b"{}")
            first = next(iter(transport.pool.live))
            await asyncio.sleep(0.2)
            await client.post(url, content=b"{}")
            assert first.closed

    with serve_fake(length) as fake:
        run(go(f"{fake.url}/x"))


def test_read_timeout_is_read_at_every_wait() -> None:
    # The proxy lowers the read timeout once the headers are in; the transport must use the
    # new value for the body.
    async def go(url: str) -> float:
        async with httpx.AsyncClient(transport=FastTransport()) as client:
            request = client.build_request(
                "POST", url, content=b"{}", timeout=httpx.Timeout(5, read=10)
            )
            response = await client.send(request, stream=True)
            request.extensions["timeout"]["read"] = 0.2
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                async for _ in response.aiter_raw():
                    pass
            await response.aclose()
            return time.monotonic() - started

    async def stalls(request: Recorded, reply: Reply) -> None:
        await reply.start()
        await reply.until_closed(10)

    with serve_fake(stalls) as fake:
        assert run(go(f"{fake.url}/x")) < 2


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        ("garbage", httpx.RemoteProtocolError),
        ("close-before-headers", httpx.RemoteProtocolError),
        ("close-mid-body", httpx.RemoteProtocolError),
    ],
)
def test_protocol_errors(handler: str, error: type[Exception]) -> None:
    async def garbage(request: Recorded, reply: Reply) -> None:
        reply.writer.write(b"SSH-2.0-nope\r\n\r\n")
        reply.writer.close()

    async def close_before_headers(request: Recorded, reply: Reply) -> None:
        reply.writer.close()

    async def close_mid_body(request: Recorded, reply: Reply) -> None:
        await reply.start()
        await reply.send(b"data: x\n\n")
        reply.writer.close()

    handlers = {
        "garbage": garbage,
        "close-before-headers": close_before_headers,
        "close-mid-body": close_mid_body,
    }
    with serve_fake(handlers[handler]) as fake, pytest.raises(error):
        run(fetch(f"{fake.url}/x", FastTransport()))


def test_connect_errors() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        run(fetch(f"http://127.0.0.1:{port}/x", FastTransport()))


def test_tls() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def go() -> tuple[int, bytes]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(7)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecure")
            await writer.drain()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        async with server:
            status, body, _ = await fetch(
                f"https://localhost:{port}/x", FastTransport(ssl_context=client_context)
            )
            with pytest.raises(httpx.ConnectError):  # an untrusted certificate is refused
                await fetch(f"https://localhost:{port}/x", FastTransport())
            return status, body

    assert run(go()) == (200, b"secure")
