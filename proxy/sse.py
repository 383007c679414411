"""Server-Sent Events: the frames we write and an incremental decoder for what upstreams send.

We write one canonical framing, ``data: <json>\\n\\n``, and only ``data:`` lines and ``:``
comments. ``\\n`` rather than sse-starlette's default ``\\r\\n``: it is what OpenAI sends, and a
CRLF split across two reads makes ``requests.iter_lines()`` yield a spurious empty line.

The decoder works on bytes, not text, on purpose: line ends are ``\\r\\n``, ``\\r`` or ``\\n``
(also mixed, also a CRLF split across two reads), and nothing else. Decoding to ``str`` first
and splitting there (httpx's ``aiter_lines()``) also splits on U+2028, U+0085 and friends,
which cuts JSON strings that contain them. A multi-byte UTF-8 character split across reads is
safe because data is only decoded (by orjson) once its event is complete.

An event is bounded (``max_event``, bytes of its lines): a hostile upstream could otherwise
send one endless line. A line arriving in many reads is kept as a list of pieces and joined
once, when its end arrives: joining at every read made a 200 MB line cost minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
MAX_EVENT = 16 * 1024 * 1024  # bytes of one event's lines (a whole Responses answer fits)
_BOM = b"\xef\xbb\xbf"
_LF, _CR = 0x0A, 0x0D


class EventTooLarge(ValueError):
    """An event (or one line) grew past the decoder's ``max_event`` bytes."""


def encode_event(payload: object) -> bytes:
    """One ``data:`` event: ``payload`` as compact JSON, raw UTF-8 (no ``\\u`` escapes)."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def encode_comment(text: str = "") -> bytes:
    """A comment line (clients ignore it); used for keepalive pings."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return b"".join(b": " + line.encode() + b"\n" for line in lines) + b"\n"


# Made for every event of every stream: read-only by convention, not frozen (a frozen
# dataclass's __init__ sets each field through object.__setattr__, 2.5 times the cost); still
# hashable by its fields, as it was.
@dataclass(slots=True, unsafe_hash=True)
class Event:
    """One dispatched SSE event. ``event`` is the ``event:`` field (``None`` if absent)."""

    data: bytes
    event: str | None = None


class SSEDecoder:
    """Feed it raw bytes as they arrive; it returns the events completed so far.

    ``id:`` and ``retry:`` are parsed and dropped (we never forward them). A legacy llama.cpp
    ``error: {...}`` line becomes an ``Event(event="error")``. Events with no data are dropped:
    re-sent as ``data:`` they would crash openai-python's JSON parsing.
    """

    __slots__ = (
        "_buf",
        "_data",
        "_event",
        "_max",
        "_parts",
        "_parts_size",
        "_size",
        "_skip_lf",
        "_started",
    )

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        self._buf = b""
        self._parts: list[bytes] = []  # reads of a line still without its end (after _buf)
        self._parts_size = 0
        self._size = 0  # bytes of the current event so far: its data lines and the open line
        self._max = max_event
        self._data: list[bytes] = []
        self._event: str | None = None
        self._skip_lf = False  # the last read ended on "\r": a "\n" starting the next is its pair
        self._started = False  # the BOM is only stripped at the very beginning

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    return []
        # Bytes are tested for "\n" and "\r" as ints (_LF, _CR): one memchr, where a one-byte
        # bytes pattern goes through the general search at seven times the cost.
        if self._started and _LF not in chunk and _CR not in chunk:
            self._parts_size += len(chunk)  # the middle of a long line: keep the piece
            self._parts.append(chunk)
            self._grow(len(self._buf))
            return []
        if self._parts:
            buf = self._buf + b"".join(self._parts) + chunk
            self._parts, self._parts_size = [], 0
        else:
            buf = self._buf + chunk if self._buf else chunk
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._buf = buf  # can't tell yet whether this is a BOM
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[3:]
        if _CR not in buf:  # the common case: LF framing, split without a regex
            lines = buf.split(b"\n")
            self._buf = lines.pop()
            events = self._lines(lines)
            self._grow(len(self._buf))  # after the lines: an event they ended no longer counts
            return events
        events = []  # CR or CRLF framing (rare): line by line, as the ends are found
        start = 0
        size = len(buf)
        while True:
            cr = buf.find(b"\r", start)
            lf = buf.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            if cr < 0 or (0 <= lf < cr):
                end, nxt = lf, lf + 1
            elif cr + 1 < size:
                end, nxt = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            else:  # "\r" is the last byte: the line is complete, its "\n" may follow
                end, nxt = cr, cr + 1
                self._skip_lf = True
            events.extend(self._lines([buf[start:end]]))
            start = nxt
        self._buf = buf[start:]
        self._grow(len(self._buf))
        return events

    def _grow(self, size: int) -> None:
        if self._size + self._parts_size + size > self._max:
            self._buf, self._parts, self._parts_size, self._data, self._size = b"", [], 0, [], 0
            raise EventTooLarge(f"an event of more than {self._max} bytes")

    def flush(self) -> list[Event]:
        """At end of input: an unterminated last event is still dispatched (we are lenient)."""
        if self._parts:
            self._buf += b"".join(self._parts)
            self._parts, self._parts_size = [], 0
        lines = [self._buf, b""] if self._buf else [b""]
        self._buf = b""
        return self._lines(lines)

    def _lines(self, lines: list[bytes]) -> list[Event]:
        """The events that complete lines complete. Runs on every read of every stream: the two
        common lines (a blank line, a ``data: `` line) are told here, without a call."""
        events: list[Event] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    joined = data[0] if len(data) == 1 else b"\n".join(data)
                    events.append(Event(joined, self._event))
                    data = self._data = []
                self._event = None
                self._size = 0
            elif line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(value)
                self._size += len(value)
                if self._size > self._max:
                    self._data, self._size = [], 0
                    raise EventTooLarge(f"an event of more than {self._max} bytes")
            else:
                self._field(line)
        return events

    def _field(self, line: bytes) -> None:
        """Any other line: a comment, ``event:``, llama.cpp's ``error:``, ``data`` alone."""
        if line[0] == 0x3A:  # ":" comment (pings, keep-alives)
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":  # "data" with no colon: an empty data line
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"error":  # llama.cpp before PR #16109: "error: {json}" instead of data
            self._event = "error"
            self._data.append(value)
        # "id", "retry" and unknown fields are ignored, as the SSE spec says.
