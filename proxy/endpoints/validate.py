"""Checking the fields of a client's JSON body, each error naming the exact ``param`` the way
OpenAI does (``messages[2].role``).

Hand-written rather than pydantic models so that the error says what OpenAI's would, and
unknown fields pass through untouched.
"""

from __future__ import annotations

from typing import Any

from proxy.errors import InvalidRequest

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    float: "a number",
    type(None): "null",
}


def required(obj: dict[str, Any], key: str, kind: type, param: str | None = None) -> Any:
    if key not in obj:
        raise InvalidRequest(
            f"Missing required parameter: '{param or key}'.",
            param=param or key,
            code="missing_required_parameter",
        )
    value = obj[key]
    if not is_a(value, kind):
        raise invalid_type(param or key, kind, value)
    return value


def optional(obj: dict[str, Any], key: str, kind: type, param: str | None = None) -> Any:
    value = obj.get(key)
    if value is not None and not is_a(value, kind):
        raise invalid_type(param or key, kind, value)
    return value


def is_a(value: Any, kind: type) -> bool:
    # bool is an int in Python, but not in JSON.
    if kind is int and isinstance(value, bool):
        return False
    return isinstance(value, kind)


def invalid_type(param: str, kind: type, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {_TYPE_NAMES[kind]}, "
        f"but got {type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


def type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def positive(obj: dict[str, Any], key: str) -> int | None:
    """An optional integer field that must be at least 1 (``max_tokens`` and friends)."""
    value = optional(obj, key, int)
    if value is not None and value < 1:
        raise InvalidRequest(
            f"Invalid value for '{key}': it must be at least 1.", param=key, code="invalid_value"
        )
    return value  # type: ignore[no-any-return]


def model_name(body: dict[str, Any]) -> str:
    """The required, non-empty ``model`` every API names."""
    model = required(body, "model", str)
    if not model:
        raise InvalidRequest(
            "Invalid value for 'model': it must not be empty.", param="model", code="invalid_value"
        )
    return model  # type: ignore[no-any-return]
