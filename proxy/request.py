"""Reading and validating a client's chat request: the body, its size limit, its fields.

Validation is hand-written rather than a pydantic model so that each error names the exact
``param`` the way OpenAI does (``messages[2].role``) and unknown fields pass through untouched.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from proxy.asgi import Message, Receive
from proxy.errors import InvalidRequest, PayloadTooLarge, RequestTimeout

ROLES = ("system", "user", "assistant", "tool", "function", "developer")
_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    float: "a number",
    type(None): "null",
}


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
            f"The request body must be a JSON object, not {_type_name(data)}.", code="invalid_json"
        )
    return data


def validate_chat(body: dict[str, Any]) -> None:
    """Check the fields the proxy itself relies on; raise InvalidRequest naming the param."""
    model = _required(body, "model", str)
    if not model:
        raise InvalidRequest(
            "Invalid value for 'model': it must not be empty.", param="model", code="invalid_value"
        )
    messages = _required(body, "messages", list)
    if not messages:
        raise InvalidRequest(
            "Invalid value for 'messages': it must contain at least one message.",
            param="messages",
            code="invalid_value",
        )
    for index, message in enumerate(messages):
        _message(message, f"messages[{index}]")
    _optional(body, "stream", bool)
    options = _optional(body, "stream_options", dict)
    if options is not None:
        _optional(options, "include_usage", bool, "stream_options.include_usage")
    for name in ("max_tokens", "max_completion_tokens"):
        value = _optional(body, name, int)
        if value is not None and value < 1:
            raise InvalidRequest(
                f"Invalid value for '{name}': it must be at least 1.",
                param=name,
                code="invalid_value",
            )


def _message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise _invalid_type(where, dict, message)
    role = _required(message, "role", str, f"{where}.role")
    if role not in ROLES:
        supported = ", ".join(f"'{r}'" for r in ROLES)
        raise InvalidRequest(
            f"Invalid value for '{where}.role': '{role}'. Supported values are: {supported}.",
            param=f"{where}.role",
            code="invalid_value",
        )
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise InvalidRequest(
            f"Invalid type for '{where}.content': expected a string or an array of content "
            f"parts, but got {_type_name(content)} instead.",
            param=f"{where}.content",
            code="invalid_type",
        )


def _required(obj: dict[str, Any], key: str, kind: type, param: str | None = None) -> Any:
    if key not in obj:
        raise InvalidRequest(
            f"Missing required parameter: '{param or key}'.",
            param=param or key,
            code="missing_required_parameter",
        )
    value = obj[key]
    if not _is(value, kind):
        raise _invalid_type(param or key, kind, value)
    return value


def _optional(obj: dict[str, Any], key: str, kind: type, param: str | None = None) -> Any:
    value = obj.get(key)
    if value is not None and not _is(value, kind):
        raise _invalid_type(param or key, kind, value)
    return value


def _is(value: Any, kind: type) -> bool:
    # bool is an int in Python, but not in JSON.
    if kind is int and isinstance(value, bool):
        return False
    return isinstance(value, kind)


def _invalid_type(param: str, kind: type, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {_TYPE_NAMES[kind]}, "
        f"but got {_type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)
