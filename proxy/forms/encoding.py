"""The multipart body the proxy sends upstream: the client's parts, re-encoded.

A boundary of ours (random, like httpx's and requests'), and for each part only what a form
part means: ``Content-Disposition: form-data`` with its name (and file name), and its
``Content-Type``; names are quoted the way browsers and httpx do (WHATWG: ``"``, CR and LF
percent-encoded). The client's own framing (its boundary, preamble, other part headers) stays
behind, so what the upstream parses is always well formed.

    --<boundary>\\r\\n<headers>\\r\\n\\r\\n<data>\\r\\n  ... one per part
    --<boundary>--\\r\\n                               the end
"""

from __future__ import annotations

import os

from proxy.forms.parser import PartStart

PART_TAIL = b"\r\n"


def new_boundary() -> bytes:
    return b"chat-stream-proxy-" + os.urandom(16).hex().encode()


def content_type(boundary: bytes) -> str:
    return f"multipart/form-data; boundary={boundary.decode()}"


def part_head(boundary: bytes, part: PartStart) -> bytes:
    """The boundary line and headers that open ``part``."""
    disposition = b'form-data; name="' + _quote(part.raw_name) + b'"'
    if part.filename is not None:
        disposition += b'; filename="' + _quote(part.filename) + b'"'
    head = b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n"
    if part.content_type:
        head += b"Content-Type: " + part.content_type + b"\r\n"
    return head + b"\r\n"


def field(boundary: bytes, name: str, value: str) -> bytes:
    """A whole text field."""
    raw = name.encode()
    return part_head(boundary, PartStart(name, raw)) + value.encode() + PART_TAIL


def closing(boundary: bytes) -> bytes:
    return b"--" + boundary + b"--\r\n"


def _quote(value: bytes) -> bytes:
    return value.replace(b'"', b"%22").replace(b"\r", b"%0D").replace(b"\n", b"%0A")
