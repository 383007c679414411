"""proxy.forms on its own: the streaming parser, the encoding, the spool, an upload's hold and
replay rules, with a hand-written ``receive`` (no socket needed for these)."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import ClientDisconnected, InvalidRequest, PayloadTooLarge, RequestTimeout
from proxy.forms import PART_END, ClientBody, FormParser, PartStart, Spool, Upload, boundary_of
from proxy.forms import upload as upload_module
from proxy.forms.encoding import field, part_head

BOUNDARY = b"xYzZy"


def form(*parts: tuple[str, str | None, str | None, bytes], boundary: bytes = BOUNDARY) -> bytes:
    """A multipart body as a client writes it: (name, filename, content type, data)."""
    out = b""
    for name, filename, kind, data in parts:
        out += b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name.encode()
        if filename is not None:
            out += b'"; filename="' + filename.encode()
        out += b'"\r\n'
        if kind is not None:
            out += b"Content-Type: " + kind.encode() + b"\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def receiver(body: bytes, piece: int = 7, then: list[dict[str, Any]] | None = None) -> Any:
    """A ``receive`` delivering ``body`` in pieces of ``piece`` bytes, then ``then``."""
    messages = [
        {"type": "http.request", "body": body[i : i + piece], "more_body": i + piece < len(body)}
        for i in range(0, len(body), piece)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    messages += then or []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    return receive


def parse(body: bytes, piece: int) -> list[Any]:
    parser = FormParser(BOUNDARY)
    events: list[Any] = []
    for start in range(0, len(body), piece):
        events += parser.feed(body[start : start + piece])
    parser.finish()
    merged: list[Any] = []  # data split across reads, joined back for comparison
    for event in events:
        if isinstance(event, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += event
        else:
            merged.append(event)
    return merged


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, 100_000])
def test_parser_yields_the_same_events_however_the_body_is_split(piece: int) -> None:
    body = form(
        ("model", None, None, b"whisper-1"),
        ("file", 'a b"c.txt', "text/plain", b"line one\r\n--xYzZ not a boundary\r\n"),
        ("empty", "e.bin", None, b""),
    )
    assert parse(body, piece) == [
        PartStart("model", b"model"),
        b"whisper-1",
        PART_END,
        PartStart("file", b"file", b'a b"c.txt', b"text/plain"),
        b"line one\r\n--xYzZ not a boundary\r\n",
        PART_END,
        PartStart("empty", b"empty", b"e.bin", None),
        PART_END,
    ]


# A part header line of 1 MB (refused long before its end, not gathered); 40 header lines.
HUGE_HEADER = b"--xYzZy\r\nContent-Disposition: form-data; name=" + b"a" * 1_000_000 + b"\r\n"
MANY_HEADERS = b"--xYzZy\r\n" + b"X-A: 1\r\n" * 40 + b"\r\nx\r\n--xYzZy--\r\n"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"garbage", "malformed"),
        (form(("a", None, None, b"1"))[:-8], "ended before its closing boundary"),
        (
            b"--xYzZy\r\nContent-Type: text/plain\r\n\r\nx\r\n--xYzZy--\r\n",
            "has no Content-Disposition",
        ),
        (
            b"--xYzZy\r\nContent-Disposition: attachment\r\n\r\nx\r\n--xYzZy--\r\n",
            "has no Content-Disposition",
        ),
        (HUGE_HEADER, "header"),
        (MANY_HEADERS, "header"),
    ],
)
def test_parser_names_what_is_wrong(body: bytes, problem: str) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        parse(body, 5)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (HUGE_HEADER, "part header is longer than 16384 bytes"),
        (MANY_HEADERS, "more than 32 headers"),
    ],
)
def test_part_headers_are_bounded_whatever_the_library_version(body: bytes, problem: str) -> None:
    """python-multipart bounds part headers itself in recent versions (4 KiB, 8 headers); the
    proxy's own bounds hold with a parser that has none (its limits lifted here)."""
    parser = FormParser(BOUNDARY)
    for limit in ("max_header_size", "max_header_count"):
        if hasattr(parser._parser, limit):
            setattr(parser._parser, limit, 10**9)
    with pytest.raises(InvalidRequest, match=problem):
        for start in range(0, len(body), 4096):
            parser.feed(body[start : start + 4096])
        parser.finish()


@pytest.mark.parametrize(
    ("content_type", "problem"),
    [
        (b"application/json", "must be multipart/form-data, not application/json"),
        (None, "not none"),
        (b"multipart/form-data", "has no boundary"),
        (b"multipart/form-data; boundary=", "has no boundary"),
    ],
)
def test_content_type_needs_multipart_and_a_boundary(
    content_type: bytes | None, problem: str
) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        boundary_of(content_type)
    assert boundary_of(b'multipart/form-data; boundary="a:b"') == b"a:b"


def test_encoding_quotes_names_as_browsers_do_and_parses_back() -> None:
    part = PartStart('we"ird', b'we"ird\r\n', b"x\ny.txt", b"text/plain")
    head = part_head(b"B", part)
    assert head == (
        b'--B\r\nContent-Disposition: form-data; name="we%22ird%0D%0A"; filename="x%0Ay.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\n"
    )
    body = head + b"data\r\n" + field(b"B", "model", "m") + b"--B--\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: multipart/form-data; boundary=B\r\n\r\n" + body
    )
    parts = list(message.iter_parts())
    assert [p.get_payload(decode=True) for p in parts] == [b"data", b"m"]


def spool_descriptors() -> int:
    """Open unlinked temporary files of this process (the spool's)."""
    fd_dir = Path("/proc/self/fd")
    count = 0
    for entry in fd_dir.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith(tempfile.gettempdir()) and target.endswith("(deleted)"):
            count += 1
    return count


def test_spool_keeps_small_data_in_memory_then_goes_to_an_unlinked_file() -> None:
    before = spool_descriptors()
    spool = Spool(memory=10)
    spool.write(b"0123456789")
    assert not spool.on_disk and spool_descriptors() == before
    spool.write(b"abc")
    assert spool.on_disk and spool_descriptors() == before + 1
    assert b"".join(spool.chunks()) == b"0123456789abc"
    assert b"".join(spool.chunks()) == b"0123456789abc"  # read again, from the start
    spool.close()
    assert spool_descriptors() == before
    spool.close()  # idempotent


def upload_of(body: bytes, *, routed: bool = True, piece: int = 7, **options: Any) -> Upload:
    limit = options.pop("limit", 1 << 30)
    then = options.pop("then", None)
    client = ClientBody(receiver(body, piece, then), limit, None, options.pop("stall", 5.0))
    return Upload(client, BOUNDARY, routed=routed)


async def sent(upload: Upload, model: str = "up-model") -> bytes:
    return b"".join([data async for data in upload.body(model)])


def reparsed(body: bytes, boundary: bytes) -> list[tuple[str | None, str | None, bytes]]:
    head = b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    return [
        (
            p.get_param("name", header="content-disposition"),
            p.get_filename(),
            p.get_payload(decode=True),
        )
        for p in message.iter_parts()
    ]


def test_a_small_upload_is_held_whole_sent_with_its_length_and_replayable() -> None:
    async def run() -> None:
        body = form(
            ("file", "a.txt", "text/plain", b"hello"),
            ("model", None, None, b"m"),
            ("stream", None, None, b"true"),
        )
        upload = upload_of(body)
        await upload.hold()
        assert upload.complete and upload.model == "m" and upload.stream
        first = await sent(upload)
        assert upload.length("up-model") == len(first)
        assert await sent(upload) == first  # a second attempt sends the same bytes
        assert upload.replayable
        assert reparsed(first, upload.boundary) == [
            ("model", None, b"up-model"),
            ("file", "a.txt", b"hello"),
            ("stream", None, b"true"),
        ]
        await upload.aclose()

    asyncio.run(run())


def test_a_large_upload_is_held_to_its_model_then_streamed_and_not_replayable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upload_module, "HOLD", 100)
    data = os.urandom(5000)

    async def run() -> None:
        upload = upload_of(
            form(("model", None, None, b"m"), ("file", "x.bin", None, data)), piece=50
        )
        await upload.hold()
        assert not upload.complete and upload.length("up") is None
        assert not upload.spooled  # the model came first: what is held stays in memory
        assert upload.replayable  # nothing read live has gone anywhere yet
        sent_body = await sent(upload, "up")
        assert not upload.replayable and upload.complete
        assert reparsed(sent_body, upload.boundary) == [
            ("model", None, b"up"),
            ("file", "x.bin", data),
        ]
        await upload.aclose()

    asyncio.run(run())


def test_a_file_before_the_model_is_spooled_to_disk_and_freed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upload_module, "Spool", lambda: Spool(memory=1000))
    data = os.urandom(20_000)

    async def run() -> None:
        before = spool_descriptors()
        upload = upload_of(
            form(("file", "x.bin", None, data), ("model", None, None, b"m")), piece=999
        )
        await upload.hold()
        assert upload.spooled and spool_descriptors() == before + 1
        assert reparsed(await sent(upload, "up"), upload.boundary)[1] == ("file", "x.bin", data)
        await upload.aclose()
        assert spool_descriptors() == before

    asyncio.run(run())


def test_files_forms_are_passed_on_as_they_are() -> None:
    async def run() -> None:
        upload = upload_of(
            form(
                ("purpose", None, None, b"batch"),
                ("model", None, None, b"kept"),
                ("file", "f", None, b"x"),
            ),
            routed=False,
        )
        await upload.hold()
        assert reparsed(await sent(upload, "ignored"), upload.boundary) == [
            ("purpose", None, b"batch"),
            ("model", None, b"kept"),
            ("file", "f", b"x"),
        ]

    asyncio.run(run())


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ((("file", "a", None, b"x"),), "Missing required parameter: 'model'"),
        ((("model", None, None, b"m"),), "Missing required parameter: 'file'"),
        (
            (("model", None, None, b"m"), ("model", None, None, b"n"), ("file", "a", None, b"x")),
            "more than one 'model'",
        ),
        (
            (("model", None, None, b"m" * 5000), ("file", "a", None, b"x")),
            "'model' field is too long",
        ),
    ],
)
def test_form_rules(parts: tuple[Any, ...], message: str) -> None:
    async def run() -> None:
        upload = upload_of(form(*parts))
        with pytest.raises(InvalidRequest, match=message):
            await upload.hold()
        assert upload.failure is not None
        await upload.aclose()

    asyncio.run(run())


def test_a_late_stream_field_that_disagrees_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload_module, "HOLD", 10)

    async def run() -> None:
        body = form(
            ("model", None, None, b"m"),
            ("file", "a", None, b"x" * 100),
            ("stream", None, None, b"true"),
        )
        upload = upload_of(body)
        await upload.hold()
        assert not upload.stream
        with pytest.raises(
            InvalidRequest, match="'stream' field must come before the file"
        ) as caught:
            await sent(upload)
        assert upload.failure is caught.value

    asyncio.run(run())


def test_client_body_limits() -> None:
    async def run() -> None:
        with pytest.raises(PayloadTooLarge):
            ClientBody(receiver(b""), 10, declared=11, stall=1)
        body = ClientBody(receiver(b"x" * 30, piece=10), 25, None, 1)
        assert await body.read() == b"x" * 10
        assert await body.read() == b"x" * 10
        with pytest.raises(PayloadTooLarge, match="limit of 25 bytes"):
            await body.read()
        stalled = ClientBody(_trickle(), 100, None, 0.05)
        assert await stalled.read() == b"x"
        with pytest.raises(RequestTimeout, match="stalled"):
            await stalled.read()
        gone_messages = [
            {"type": "http.request", "body": b"abc", "more_body": True},
            {"type": "http.disconnect"},
        ]

        async def leaving() -> dict[str, Any]:
            return gone_messages.pop(0)

        gone = ClientBody(leaving, 100, None, 1)
        assert await gone.read() == b"abc"
        with pytest.raises(ClientDisconnected):
            await gone.read()
        assert (await gone.watch())["type"] == "http.disconnect"  # what the watchdog hears

    asyncio.run(run())


def _trickle() -> Any:
    """One byte, then nothing: a client that stalls mid-upload."""
    sent: list[bool] = []

    async def receive() -> dict[str, Any]:
        if not sent:
            sent.append(True)
            return {"type": "http.request", "body": b"x", "more_body": True}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    return receive


def test_watch_waits_for_the_body_then_listens() -> None:
    async def run() -> None:
        body = ClientBody(
            receiver(b"abc", piece=3, then=[{"type": "http.disconnect"}]), 100, None, 1
        )
        watching = asyncio.ensure_future(body.watch())
        await asyncio.sleep(0.01)
        assert not watching.done()  # the body is still being read: nobody else may receive
        assert await body.read() == b"abc"
        assert (await asyncio.wait_for(watching, 1))["type"] == "http.disconnect"

    asyncio.run(run())
