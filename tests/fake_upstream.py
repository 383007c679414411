"""A fake upstream on a real socket: raw asyncio HTTP/1.1, no framework, in its own thread.

Each request goes to ``handler(request, reply)``; ``reply`` writes the status line, headers and
a chunked body in pieces as small as asked (with TCP_NODELAY and a pause between writes, so
the proxy really reads them separately), or stalls, resets, or sends garbage. The server
records every request and when each connection was closed by the proxy, which is how the
disconnect tests observe that the proxy dropped its upstream request.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    writer: asyncio.StreamWriter
    peer_closed: asyncio.Event = field(default_factory=asyncio.Event)
    chunked: bool = True

    async def start(
        self, status: int = 200, headers: dict[str, str] | None = None, *, chunked: bool = True
    ) -> None:
        self.chunked = chunked
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        merged = {"content-type": "text/event-stream; charset=utf-8", **(headers or {})}
        if chunked:
            merged["transfer-encoding"] = "chunked"
        lines += [f"{k}: {v}" for k, v in merged.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def send(self, data: bytes, *, piece: int = 0, pause: float = 0.0) -> None:
        """``data`` as body bytes, in TCP writes of ``piece`` bytes (all at once if 0)."""
        size = piece or len(data) or 1
        for start in range(0, len(data), size):
            part = data[start : start + size]
            if self.chunked:
                part = f"{len(part):x}\r\n".encode() + part + b"\r\n"
            self.writer.write(part)
            await self.writer.drain()
            if pause:
                await asyncio.sleep(pause)

    async def end(self) -> None:
        if self.chunked:
            self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.start(
            status,
            {
                "content-type": "application/json",
                "content-length": str(len(raw)),
                **(headers or {}),
            },
            chunked=False,
        )
        self.writer.write(raw)
        await self.writer.drain()

    def reset(self) -> None:
        """Close the connection abruptly (RST), e.g. mid-body."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        self.writer.transport.abort()

    async def until_closed(self, timeout: float) -> bool:
        """Wait for the proxy to close the connection; True if it did within ``timeout``."""
        try:
            await asyncio.wait_for(self.peer_closed.wait(), timeout)
        except TimeoutError:
            return False
        return True


Handler = Callable[[Recorded, Reply], Awaitable[None]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class FakeUpstream:
    """See the module docstring. Use ``with serve_fake(handler) as fake:``; ``fake.url``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Recorded] = []
        self.closed_at: list[float] = []  # monotonic times at which the proxy closed a connection
        self.open_connections = 0
        self.connections = 0  # accepted in all
        self.url = ""
        self.loop: asyncio.AbstractEventLoop | None = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.open_connections += 1
        self.connections += 1
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                self.requests.append(request)
                reply = Reply(writer)
                watcher = asyncio.ensure_future(self._watch_eof(reader, reply))
                try:
                    await self.handler(request, reply)
                except (ConnectionError, OSError):
                    break
                if writer.transport.is_closing():
                    break
                watcher.cancel()
        finally:
            self.open_connections -= 1
            writer.close()

    async def _watch_eof(self, reader: asyncio.StreamReader, reply: Reply) -> None:
        try:
            data = await reader.read(1)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.closed_at.append(time.monotonic())
            reply.peer_closed.set()


async def _read_request(reader: asyncio.StreamReader) -> Recorded | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Recorded(method, path, headers, body)


@contextmanager
def serve_fake(handler: Handler) -> Iterator[FakeUpstream]:
    fake = FakeUpstream(handler)
    with serving_in_thread(fake, fake._connection):
        yield fake


@contextmanager
def serving_in_thread(fake: Any, connection: Any) -> Iterator[None]:
    """Serve ``connection`` (an asyncio ``start_server`` callback) on 127.0.0.1 in a thread of
    its own; sets ``fake.url`` (ending in /v1) and ``fake.loop``; stops on exit."""
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def main() -> None:
        server = await asyncio.start_server(connection, "127.0.0.1", 0)
        fake.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        fake.loop = asyncio.get_running_loop()
        stop.append(asyncio.Event())
        ready.set()
        async with server:
            await stop[0].wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        fake.loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)


def sse_response(*events: bytes, piece: int = 0, pause: float = 0.0, end: bool = True) -> Handler:
    """A handler streaming ``events`` (raw bytes) then ending the body."""

    async def handler(request: Recorded, reply: Reply) -> None:
        await reply.start()
        for event in events:
            await reply.send(event, piece=piece, pause=pause)
        if end:
            await reply.end()

    return handler


def completion(content: str, usage: dict[str, int] | None = None, **message: Any) -> dict[str, Any]:
    """A plain ``chat.completion`` body, as an upstream answers a non-stream request."""
    body: dict[str, Any] = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body
