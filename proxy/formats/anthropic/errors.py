"""Errors in Anthropic's shape, and the ``InvalidRequest`` builders of the request side.

Anthropic's body is ``{"type": "error", "error": {"type", "message"}}``; the SDKs pick their
exception class from the HTTP status, and ``error.type`` from this table (Anthropic's "HTTP
errors" page; 504 ``timeout_error`` is the SDK's ``GatewayTimeoutErrorObject``). An error
event mid-stream has the same body; the SDK raises ``APIStatusError`` for it.
"""

from __future__ import annotations

from typing import Any

from proxy.errors import InvalidRequest, Kind, ProxyError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's ``error.type`` for an HTTP status: "invalid_request_error" for any other
    4xx (as Anthropic documents), "api_error" for any other 5xx."""
    if status in _TYPES:
        return _TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


# An upstream's error event (in its stream) names its type itself; the status is the proxy's
# 502, so an Anthropic type the upstream gave is kept (``overloaded_error`` says more).
_UPSTREAM_TYPES = frozenset(_TYPES.values())


def error_body(error: ProxyError) -> dict[str, Any]:
    """The body of an HTTP error response, or the payload of an ``error`` event."""
    stream = error.kind is Kind.STREAM_ERROR and error.type in _UPSTREAM_TYPES
    kind = error.type if stream else None
    message = {"type": kind or error_type(error.status), "message": error.message}
    return {"type": "error", "error": message}


def missing(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def invalid(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {why}.", param=param, code="invalid_value")


def unsupported(param: str, value: str, where: str) -> InvalidRequest:
    """Something valid at Anthropic that a chat completions upstream cannot do."""
    return InvalidRequest(
        f"Unsupported value for '{param}': {value!r} is not supported {where} by this model, "
        "which is served through chat completions.",
        param=param,
        code="unsupported_value",
    )
