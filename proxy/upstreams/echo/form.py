"""How the echo model reads an upload: as an HTTP upstream would, from the multipart body the
proxy sends (parsed again with the same streaming parser, so every echo test also checks the
proxy's encoding), one part at a time as it arrives.

Text fields (a value's first 4 KiB; the first ``MAX_KEPT`` names, as the proxy keeps them) are
collected; the bytes of each file part go to the ``Sink`` that ``sink_for`` gives for it (one
that keeps a bounded prefix, or the file store), never gathered here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from proxy.forms import PART_END, FormParser, PartStart, boundary_of
from proxy.forms.upload import MAX_KEPT
from proxy.upstreams.transfer import Form

FIELD_VALUE = 4096


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class Text:
    """A file part kept as text, up to ``limit`` bytes (beyond it only counted)."""

    def __init__(self, part: PartStart, limit: int = 1024 * 1024) -> None:
        self.part = part
        self.limit = limit
        self.size = 0
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if len(self.data) <= self.limit:
            self.data += data[: self.limit + 1 - len(self.data)]

    def close(self) -> None:
        return None

    @property
    def whole(self) -> bool:
        return self.size <= self.limit


async def read_form(
    form: Form, model: str, sink_for: Callable[[PartStart], Sink]
) -> dict[str, str]:
    """The form's text fields; each file part's bytes go to ``sink_for(part)``."""
    parser = FormParser(boundary_of(form.content_type.encode()))
    fields: dict[str, str] = {}
    value, sink, part = bytearray(), None, None
    async for data in form.body(model):
        for event in parser.feed(data):
            if isinstance(event, PartStart):
                part, value = event, bytearray()
                sink = sink_for(event) if event.filename is not None else None
            elif event is PART_END:
                if sink is not None:
                    sink.close()
                elif part is not None and len(fields) < MAX_KEPT:
                    fields.setdefault(part.name, value[:FIELD_VALUE].decode("utf-8", "replace"))
                sink = part = None
            elif isinstance(event, bytes):
                if sink is not None:
                    sink.write(event)
                elif len(value) <= FIELD_VALUE:
                    value += event
    parser.finish()
    return fields
