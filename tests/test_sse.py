"""SSE encoding and decoding, byte exact."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.sse import DONE, PING, Event, EventTooLarge, SSEDecoder, encode_comment, encode_event


@pytest.mark.parametrize(
    ("payload", "wire"),
    [
        ({"a": 1}, b'data: {"a":1}\n\n'),
        ({"content": "你好"}, b'data: {"content":"\xe4\xbd\xa0\xe5\xa5\xbd"}\n\n'),
        ({"content": "a\nb"}, b'data: {"content":"a\\nb"}\n\n'),  # newlines stay escaped
        ({"content": "\u2028"}, b'data: {"content":"\xe2\x80\xa8"}\n\n'),
        ({"error": {"message": "x"}}, b'data: {"error":{"message":"x"}}\n\n'),
    ],
)
def test_encode_event(payload: object, wire: bytes) -> None:
    assert encode_event(payload) == wire


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("", b": \n\n"),
        ("ping", b": ping\n\n"),
        ("a\nb", b": a\n: b\n\n"),
        ("a\r\nb", b": a\n: b\n\n"),
    ],
)
def test_encode_comment(text: str, wire: bytes) -> None:
    assert encode_comment(text) == wire


def test_constants() -> None:
    assert DONE == b"data: [DONE]\n\n"
    assert encode_comment("ping") == PING


def decode(*reads: bytes) -> list[Event]:
    decoder = SSEDecoder()
    events = [event for read in reads for event in decoder.feed(read)]
    return events + decoder.flush()


def one_byte_at_a_time(data: bytes) -> list[Event]:
    return decode(*(data[i : i + 1] for i in range(len(data))))


CASES = [
    # (name, wire, expected events as (data, event))
    ("lf", b"data: a\n\ndata: b\n\n", [(b"a", None), (b"b", None)]),
    ("crlf", b"data: a\r\n\r\ndata: b\r\n\r\n", [(b"a", None), (b"b", None)]),
    ("cr", b"data: a\r\rdata: b\r\r", [(b"a", None), (b"b", None)]),
    ("mixed", b"data: a\r\n\ndata: b\r\rdata: c\n\r\n", [(b"a", None), (b"b", None), (b"c", None)]),
    ("no space after colon", b"data:a\n\n", [(b"a", None)]),
    ("two spaces keep one", b"data:  a\n\n", [(b" a", None)]),
    ("comments dropped", b": ping - 2025\n\n:\n\ndata: a\n: mid\n\n", [(b"a", None)]),
    ("multi-line data", b'data: {\ndata: "a": 1\ndata: }\n\n', [(b'{\n"a": 1\n}', None)]),
    ("event field kept", b"event: error\ndata: {}\n\n", [(b"{}", "error")]),
    ("id and retry dropped", b"id: 7\nretry: 100\ndata: a\n\n", [(b"a", None)]),
    ("event without data dropped", b"event: ping\n\n", []),
    ("empty data is an event", b"data:\n\n", [(b"", None)]),
    ("blank lines only", b"\n\n\r\n\r\r", []),
    ("llama.cpp error field", b'error: {"code":400}\n\n', [(b'{"code":400}', "error")]),
    ("bom stripped", b"\xef\xbb\xbfdata: a\n\n", [(b"a", None)]),
    ("bom only at start", b"data: a\n\n\xef\xbb\xbfdata: b\n\n", [(b"a", None)]),
    ("unterminated last event", b"data: a\n\ndata: b", [(b"a", None), (b"b", None)]),
    ("missing done is fine", b"data: a\n\n", [(b"a", None)]),
    (
        "u2028 not a line end",
        'data: {"c":"\u2028\u0085"}\n\n'.encode(),
        [('{"c":"\u2028\u0085"}'.encode(), None)],
    ),
    ("long line", b"data: " + b"x" * 1_000_000 + b"\n\n", [(b"x" * 1_000_000, None)]),
]


def _as_tuples(events: list[Event]) -> list[tuple[bytes, str | None]]:
    return [(e.data, e.event) for e in events]


@pytest.mark.parametrize(("name", "wire", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decoder_whole(name: str, wire: bytes, expected: list[tuple[bytes, str | None]]) -> None:
    assert _as_tuples(decode(wire)) == expected


@pytest.mark.parametrize(
    ("name", "wire", "expected"),
    [c for c in CASES if c[0] != "long line"],
    ids=[c[0] for c in CASES if c[0] != "long line"],
)
def test_decoder_byte_by_byte(
    name: str, wire: bytes, expected: list[tuple[bytes, str | None]]
) -> None:
    assert _as_tuples(one_byte_at_a_time(wire)) == expected


def test_empty_data_event_is_not_forwarded_as_data() -> None:
    # "data:\n\n" decodes to empty data; the stream layer drops it (it would crash clients).
    assert decode(b"data:\n\n")[0].data == b""


def test_crlf_split_across_reads_gives_one_line_end() -> None:
    events = decode(b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n")
    assert _as_tuples(events) == [(b"a", None), (b"b", None)]


def test_utf8_split_across_reads() -> None:
    text = 'data: {"c":"你好🙂"}\n\n'.encode()
    cut = text.index("好".encode()) + 1  # inside the 3-byte character
    for cuts in ([cut], [cut, cut + 1], [text.index(b"\xf0") + 2]):
        reads = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert decode(*reads)[0].data.decode() == '{"c":"你好🙂"}'


def test_events_come_out_as_soon_as_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert _as_tuples(decoder.feed(b"\ndata: b")) == [(b"a", None)]
    assert _as_tuples(decoder.feed(b"\n\n")) == [(b"b", None)]


# The event bound is checked once a read's lines are taken: an event they ended no longer
# counts, and a line still open counts together with the event's data lines so far.
@pytest.mark.parametrize(
    ("max_event", "reads", "expected"),
    [
        (10, [b"data: 0123456789\n", b"\ndata: nex"], [(b"0123456789", None), (b"nex", None)]),
        (10, [b"data: 01234567\ndat"], EventTooLarge),
        (5, [b"data: 123456\r\ndata"], EventTooLarge),
        (10, [b"data: 0123\r\n\r\ndata: 456789\r\n\r\n"], [(b"0123", None), (b"456789", None)]),
    ],
)
def test_decoder_bound_after_the_reads_lines(
    max_event: int, reads: list[bytes], expected: Any
) -> None:
    decoder = SSEDecoder(max_event)
    if expected is EventTooLarge:
        with pytest.raises(EventTooLarge):
            for read in reads:
                decoder.feed(read)
        assert decoder.flush() == []  # nothing of the refused event comes out afterwards
        return
    events = [event for read in reads for event in decoder.feed(read)] + decoder.flush()
    assert [(e.data, e.event) for e in events] == expected


def test_events_are_hashable_values() -> None:
    assert hash(Event(b"x", "e")) == hash(Event(b"x", "e"))
    assert len({Event(b"x"), Event(b"x"), Event(b"y")}) == 2
