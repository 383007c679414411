"""Calls that are not one JSON body, and answers passed on as bytes.

A ``Transfer`` says what such a call asks of an upstream: an HTTP method and a path under the
API's base path (``POST /audio/transcriptions``, ``GET /files/file-abc/content``), the
client's query string, and for an upload its multipart ``Form``, read from the client once,
as the upstream takes it (``proxy.forms.Upload`` is the one implementation).

A ``RawBody`` is an answer passed on as it came: its status, the headers that describe it
(``content-type``, ``content-length``, ``content-disposition``) and its bytes as they arrive
(a transcript as text, srt or vtt; a file's content, however large).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from proxy.errors import ProxyError

# The response headers of an upstream's answer that a passed-on answer keeps.
PASSED_HEADERS = ("content-type", "content-length", "content-disposition")


class Form(Protocol):
    """A multipart body on its way from the client (see ``proxy.forms.upload``)."""

    content_type: str  # multipart/form-data with our boundary
    failure: ProxyError | None  # why reading the client's body failed, if it did

    @property
    def replayable(self) -> bool:
        """Could another attempt send the body again (nothing read live was sent yet)?"""
        ...

    def body(self, model: str) -> AsyncIterator[bytes]:
        """One attempt's body, with the route's name for the model."""
        ...

    def length(self, model: str) -> int | None:
        """The length of ``body(model)``, if known (everything is held)."""
        ...


@dataclass(frozen=True, slots=True)
class Transfer:
    """What a non-JSON call asks of the upstream (see the module docstring)."""

    method: str = "POST"
    path: str = ""  # under the API's path: "/transcriptions", "/file-abc/content"
    query: str = ""  # the client's query string, passed on
    form: Form | None = None


@dataclass(slots=True)
class RawBody:
    """An answer passed on as it came (see the module docstring)."""

    status: int
    headers: dict[str, str]  # lower-case names, among PASSED_HEADERS
    chunks: AsyncGenerator[bytes, None]  # raises ProxyError if the body breaks
