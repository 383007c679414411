"""A streaming multipart/form-data parser: python-multipart's ``MultipartParser`` (the one
Starlette uses), fed bytes as they arrive, turned into events.

Each ``feed(data)`` returns the events that ``data`` completed, in order: a ``PartStart`` (a
part's name, file name and content type, once its headers are in), ``bytes`` (the part's
data, as it arrives: never gathered), ``PART_END``. Nothing is buffered here beyond what the
parser keeps to recognise a boundary split across two reads. Malformed input, a part without
a name, or a body that ends before its closing boundary (``finish``) is an ``InvalidRequest``
naming the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from proxy.errors import InvalidRequest

if TYPE_CHECKING:  # python-multipart declares it for type checkers only
    from python_multipart.multipart import MultipartCallbacks

# A part's headers, bounded here rather than trusting each python-multipart version to: a part
# is a name, a file name and a content type, never kilobytes of headers.
MAX_HEADER_BYTES = 16 * 1024  # one header line (name + value)
MAX_HEADERS = 32  # header lines in one part


@dataclass(frozen=True, slots=True)
class PartStart:
    """A part's headers: its ``name``, and for a file its ``filename`` and ``content_type``
    (raw bytes, re-sent as they came)."""

    name: str
    raw_name: bytes
    filename: bytes | None = None
    content_type: bytes | None = None


class _PartEnd:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PART_END"


PART_END: Final = _PartEnd()
Event = PartStart | bytes | _PartEnd


def boundary_of(content_type: bytes | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type; ``InvalidRequest`` otherwise."""
    kind, options = parse_options_header(content_type or b"")
    if kind != b"multipart/form-data":
        shown = kind.decode("latin-1") or "none"
        raise InvalidRequest(
            f"The request body must be multipart/form-data, not {shown} (requests: files=...; "
            "curl: -F file=@audio.mp3).",
            code="invalid_content_type",
        )
    boundary = options.get(b"boundary", b"")
    if not boundary:
        raise InvalidRequest(
            "The multipart/form-data Content-Type has no boundary.", code="invalid_multipart"
        )
    return boundary


class FormParser:
    """See the module docstring. One per body."""

    def __init__(self, boundary: bytes) -> None:
        # The parser calls back into ``_Parts``, which does not hold the parser: were the
        # callbacks this object's methods, each form would be a reference cycle (with the
        # last data read) left for the cyclic collector (proxy/heap.py).
        self._parts = _Parts()
        try:
            self._parser = MultipartParser(boundary, self._parts.callbacks())
        except FormParserError as exc:
            raise _malformed(str(exc)) from None

    def feed(self, data: bytes) -> list[Event]:
        """The events ``data`` completes."""
        events: list[Event] = []
        self._parts.events = events
        try:
            self._parser.write(data)
        except FormParserError as exc:
            raise _malformed(str(exc)) from None
        return events

    def finish(self) -> None:
        """The body ended: it must have ended with its closing boundary."""
        if self._parser.state != MultipartState.END:
            raise _malformed("the body ended before its closing boundary")


class _Parts:
    """What the parser's callbacks make of a body: its events, one ``feed`` at a time."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._lines = 0  # header lines of the current part

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_field,
            "on_header_value": self._on_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_data,
            "on_part_end": self._on_part_end,
        }

    def _on_part_begin(self) -> None:
        self._headers.clear()
        self._lines = 0

    def _on_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        self._bound()

    def _on_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._bound()

    def _bound(self) -> None:
        if len(self._field) + len(self._value) > MAX_HEADER_BYTES:
            raise _malformed(f"a part header is longer than {MAX_HEADER_BYTES} bytes")

    def _on_header_end(self) -> None:
        self._lines += 1
        if self._lines > MAX_HEADERS:
            raise _malformed(f"a part has more than {MAX_HEADERS} headers")
        self._headers[bytes(self._field).strip().lower()] = bytes(self._value).strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        kind, options = parse_options_header(self._headers.get(b"content-disposition"))
        raw_name = options.get(b"name")
        if kind != b"form-data" or raw_name is None:
            raise _malformed("a part has no Content-Disposition: form-data; name=...")
        self.events.append(
            PartStart(
                name=raw_name.decode("utf-8", "replace"),
                raw_name=raw_name,
                filename=options.get(b"filename"),
                content_type=self._headers.get(b"content-type") or None,
            )
        )

    def _on_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self.events.append(data[start:end])

    def _on_part_end(self) -> None:
        self.events.append(PART_END)


def _malformed(problem: str) -> InvalidRequest:
    return InvalidRequest(
        f"The multipart body is malformed: {problem.rstrip('.')}.", code="invalid_multipart"
    )
