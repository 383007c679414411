"""A fake upstream for uploads, on a real socket: raw asyncio HTTP/1.1, in its own thread (or
its own process: ``python -m tests.upload_upstream --port N``, the bench's direct target).

It reads each request body as it arrives (``Content-Length`` or chunked), parses the
multipart form with python-multipart as it goes and records what it saw (``Seen``): the
framing, every part's name, file name, type, size and SHA-256, the fields, whether the body
was complete or the connection closed before it was. Nothing is gathered (a 1 GB upload costs
it no memory), except bodies under ``KEEP`` bytes, kept whole for an independent parse in the
tests. It answers once the body is in, as ``answer(seen)`` says (JSON naming what it got, by
default), or stops reading after ``stall_after`` bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import email.policy
import hashlib
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from tests.fake_upstream import serving_in_thread

KEEP = 1024 * 1024  # bodies up to this many bytes are also kept whole


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    size: int = 0
    value: bytes = b""  # the first 4 KiB
    digest: Any = field(default_factory=hashlib.sha256)

    @property
    def sha256(self) -> str:
        return str(self.digest.hexdigest())


@dataclass
class Seen:
    """One request as the fake upstream received it."""

    method: str
    path: str
    headers: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    received: int = 0  # body bytes (not counting chunked framing)
    complete: bool = False  # the whole body arrived
    closed: bool = False  # the connection ended before the body did
    parts: list[Part] = field(default_factory=list)
    raw: bytearray | None = field(default_factory=bytearray)
    done: threading.Event = field(default_factory=threading.Event)  # body over (or closed)

    @property
    def framing(self) -> str:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return "chunked"
        return "content-length" if "content-length" in self.headers else "none"

    @property
    def fields(self) -> dict[str, str]:
        return {p.name: p.value.decode() for p in self.parts if p.filename is None}

    def part(self, name: str) -> Part:
        return next(part for part in self.parts if part.name == name)

    def email_parts(self) -> list[tuple[str | None, str | None, bytes]]:
        """The kept body parsed by the standard library's email parser: an independent check
        of the multipart encoding. (name, filename, data) per part."""
        assert self.raw is not None, "the body was too large to keep"
        head = f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + self.raw)
        assert message.is_multipart() and not message.defects, message.defects
        return [
            (
                part.get_param("name", header="content-disposition"),
                part.get_filename(),
                part.get_payload(decode=True),
            )
            for part in message.iter_parts()
        ]


@dataclass
class Answer:
    status: int = 200
    content_type: str = "application/json"
    body: bytes = b""
    events: list[bytes] | None = None  # SSE, written one by one, ``pause`` apart
    pause: float = 0.0


async def default_answer(seen: Seen) -> Answer:
    summary = [{"name": p.name, "filename": p.filename, "size": p.size} for p in seen.parts]
    text = f"{seen.received} bytes"
    return Answer(body=json.dumps({"text": text, "parts": summary}).encode())


class UploadUpstream:
    """See the module docstring."""

    def __init__(
        self,
        answer: Callable[[Seen], Awaitable[Answer]] = default_answer,
        stall_after: int | None = None,
        record: bool = True,
    ) -> None:
        self.answer = answer
        self.stall_after = stall_after
        self.record = record
        self.seen: list[Seen] = []
        self.url = ""
        self.loop: asyncio.AbstractEventLoop | None = None

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                seen = _head(head)
                if self.record:
                    self.seen.append(seen)
                try:
                    await self._body(reader, seen)
                except (asyncio.IncompleteReadError, ConnectionError):
                    seen.closed = True
                    return
                finally:
                    seen.done.set()
                await _write(writer, await self.answer(seen))
        except asyncio.CancelledError:
            return  # the fake is shutting down (a stalled reader among its connections)
        finally:
            writer.close()

    async def _body(self, reader: asyncio.StreamReader, seen: Seen) -> None:
        feed = _form(seen)
        async for data in _chunks(reader, seen):
            seen.received += len(data)
            if seen.raw is not None:
                seen.raw = seen.raw + data if len(seen.raw) + len(data) <= KEEP else None
            feed(data)
            if self.stall_after is not None and seen.received >= self.stall_after:
                await asyncio.sleep(3600)  # stops reading: the sender's writes back up
        seen.complete = True


def _head(head: bytes) -> Seen:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return Seen(method, path, headers)


async def _chunks(reader: asyncio.StreamReader, seen: Seen) -> Any:
    """The body's bytes, unframed, as they arrive."""
    if seen.framing == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return
            while size:
                data = await reader.read(min(size, 256 * 1024))
                if not data:
                    raise asyncio.IncompleteReadError(b"", size)
                size -= len(data)
                yield data
            await reader.readexactly(2)
    remaining = int(seen.headers.get("content-length", "0"))
    while remaining:
        data = await reader.read(min(remaining, 256 * 1024))
        if not data:
            raise asyncio.IncompleteReadError(b"", remaining)
        remaining -= len(data)
        yield data


def _form(seen: Seen) -> Callable[[bytes], None]:
    """A feeder for the body's multipart parts (nothing for other bodies)."""
    kind, options = parse_options_header(seen.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        return lambda data: None
    state: dict[str, Any] = {"field": b"", "value": b"", "headers": {}}

    def header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"] = state["value"] = b""

    def headers_finished() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        filename = disposition.get(b"filename")
        kind = state["headers"].get(b"content-type")
        seen.parts.append(
            Part(
                disposition.get(b"name", b"").decode(),
                filename.decode() if filename is not None else None,
                kind.decode() if kind is not None else None,
            )
        )
        state["headers"] = {}

    def data(chunk: bytes, start: int, end: int) -> None:
        part = seen.parts[-1]
        part.size += end - start
        part.digest.update(chunk[start:end])
        if len(part.value) < 4096:
            part.value += chunk[start:end][: 4096 - len(part.value)]

    def field_part(chunk: bytes, start: int, end: int) -> None:
        state["field"] += chunk[start:end]

    def value_part(chunk: bytes, start: int, end: int) -> None:
        state["value"] += chunk[start:end]

    parser = MultipartParser(
        options[b"boundary"],
        {
            "on_header_field": field_part,
            "on_header_value": value_part,
            "on_header_end": header_end,
            "on_headers_finished": headers_finished,
            "on_part_data": data,
        },
    )

    def feed(chunk: bytes) -> None:
        parser.write(chunk)

    return feed


async def _write(writer: asyncio.StreamWriter, answer: Answer) -> None:
    if answer.events is None:
        head = (
            f"HTTP/1.1 {answer.status} X\r\ncontent-type: {answer.content_type}\r\n"
            f"content-length: {len(answer.body)}\r\n\r\n"
        )
        writer.write(head.encode() + answer.body)
        await writer.drain()
        return
    head = (
        f"HTTP/1.1 {answer.status} X\r\ncontent-type: text/event-stream\r\n"
        "transfer-encoding: chunked\r\n\r\n"
    )
    writer.write(head.encode())
    for event in answer.events:
        writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        await writer.drain()
        if answer.pause:
            await asyncio.sleep(answer.pause)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


@contextmanager
def serve_uploads(upstream: UploadUpstream | None = None) -> Iterator[UploadUpstream]:
    """``upstream`` (a default one if None) on 127.0.0.1, in a thread; ``.url`` ends in /v1."""
    fake = upstream or UploadUpstream()
    with serving_in_thread(fake, fake.connection):
        yield fake


def main() -> None:
    """The bench's direct target: records nothing, answers JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    fake = UploadUpstream(record=False)

    async def serve() -> None:
        server = await asyncio.start_server(fake.connection, "127.0.0.1", args.port)
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:  # pragma: no cover
        asyncio.run(serve())


if __name__ == "__main__":
    main()
