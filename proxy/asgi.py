"""ASGI vocabulary and the few helpers every pure-ASGI part of the proxy shares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from proxy.errors import ProxyError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
# The charset matters: requests decodes text/* without one as ISO-8859-1.
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer this response
]


# The ``send`` the app itself was called with, noted in the scope by ``proxy.app.ProxyApp``.
APP_SEND = "proxy.app_send"


def body_sender(scope: Scope, send: Send) -> Send:
    """What a stream's body messages may be written with once its response start has gone
    through ``send``: the send the app was called with (past its own middleware), else ``send``.

    Every middleware inside the app looks at the response start alone (``proxy.app.START_ONLY``,
    tested): for the body each was one more coroutine call per chunk, three in all, about a
    third of a microsecond on each chunk of every stream. Whatever wraps the app from outside
    (a buffering or compressing layer, the tests' negative controls) still gets every message;
    and the start and the last message still go through the app's own middleware, so the
    access log and the error middlewares see the response begin and end."""
    found: Send | None = scope.get(APP_SEND)
    return send if found is None else found


def header_value(value: str) -> bytes:
    """A response header's value as bytes. Values copied from an upstream (``Retry-After``, a
    download's ``Content-Disposition``) may hold bytes that are not UTF-8, which aiohttp
    decodes as lone surrogates: a strict encode raised, and a hostile upstream turned its answer
    into our 500. ``surrogateescape`` gives back the bytes as they came (its parser has already
    refused CR and LF in a value)."""
    return value.encode("utf-8", "surrogateescape")


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header ``name`` (lower-case bytes), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


async def send_json(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    """A complete JSON response in one body message."""
    raw = list(JSON_HEADERS)
    if headers:
        raw.extend((k.lower().encode(), header_value(v)) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, error: ProxyError) -> None:
    """``error`` as an HTTP response in OpenAI's error shape."""
    await send_json(send, error.status, error.to_json(), error.headers)
