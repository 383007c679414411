"""Reading a client's request body: its size limit while reading, its time limit, its JSON."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from proxy.asgi import Message, Receive
from proxy.endpoints.validate import type_name
from proxy.errors import InvalidRequest, PayloadTooLarge, RequestTimeout
from proxy.jsondepth import TOO_DEEP, writable


async def read_body(
    receive: Receive,
    limit: int,
    content_length: int | None,
    timeout: float | None = None,  # noqa: ASYNC109
) -> bytes:
    """The whole request body, refusing it with 413 as soon as it passes ``limit`` bytes, and
    with 408 if it has not all arrived within ``timeout`` seconds (a trickling client)."""
    if content_length is not None and content_length > limit:
        raise _too_large(limit)
    message = await receive()  # usually the whole body: no timer for the common case
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise _too_large(limit)
        return body
    try:
        async with asyncio.timeout(timeout):
            return await _read_rest(receive, message, limit)
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {timeout:g} s.", code="body_timeout"
        ) from None


async def _read_rest(receive: Receive, message: Message, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client disconnected while sending the body")
        body = message.get("body", b"")
        if body:
            size += len(body)
            if size > limit:
                raise _too_large(limit)
            parts.append(body)
        if not message.get("more_body", False):
            return b"".join(parts)
        message = await receive()


def content_length(value: bytes | None) -> int | None:
    """The declared body size; absurdly long numbers count as too large (never int() them:
    Python refuses to convert more than 4,300 digits)."""
    if not value or not value.isdigit():
        return None
    return int(value) if len(value) <= 18 else 1 << 62


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, whatever Content-Type the client sent (or none)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The body must be a JSON object "
            "(send it with Content-Type: application/json, or requests' json=).",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, not {type_name(data)}.", code="invalid_json"
        )
    if not writable(body, data):  # it could be read, not written on (``proxy.jsondepth``)
        raise InvalidRequest(
            f"The request body is {TOO_DEEP}.",
            code="invalid_json",
        )
    return data
