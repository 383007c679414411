"""The proxy's one exception tree; every error knows how it looks on the wire.

    ProxyError                      500 server_error
    ├── InvalidRequest              400 invalid_request_error (the bad ``param`` named)
    ├── AuthenticationFailed        401 invalid_api_key
    ├── NotFound                    404 (unknown route)
    │   └── ModelNotFound           404 model_not_found
    ├── MethodNotAllowed            405
    ├── RequestTimeout              408 (the body trickled in too slowly)
    ├── PayloadTooLarge             413
    ├── ServiceUnavailable          503 (shutting down)
    └── UpstreamError               502 upstream_error
        ├── UpstreamTimeout         504 (nothing before ``first_byte``; idle mid-stream)
        └── UpstreamStatusError     the upstream's own 4xx/5xx, message kept, secrets not

Before the response has started an error is sent as an HTTP status with the body
``{"error": {"message", "type", "param", "code"}}``; after an SSE stream has started the same
object is sent as one ``data:`` event and the stream ends without ``[DONE]``. Foreign
exceptions (httpx, orjson) are translated into this tree at the one place they can arise.
"""

from __future__ import annotations

from typing import Any

import orjson


class ProxyError(Exception):
    """Base of every error the proxy reports to a client."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.headers: dict[str, str] = headers or {}

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error object, wrapped in ``{"error": ...}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


class InvalidRequest(ProxyError):
    """The client's request is malformed; ``param`` names the offending field."""

    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(ProxyError):
    """Missing or wrong ``Authorization: Bearer`` key while ``api_keys`` is set."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(ProxyError):
    """No such route."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    """The requested public model name is not configured."""

    code = "model_not_found"


class MethodNotAllowed(ProxyError):
    """The route exists but not for this HTTP method."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(ProxyError):
    """The request body did not arrive within ``body_timeout_seconds``."""

    status = 408
    type = "invalid_request_error"
    code = "body_timeout"


class PayloadTooLarge(ProxyError):
    """The request body exceeds ``max_body_bytes``."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class ServiceUnavailable(ProxyError):
    """The proxy is shutting down and takes no new streams."""

    status = 503
    type = "server_error"
    code = "shutting_down"


class UpstreamError(ProxyError):
    """The upstream could not be reached or answered something unusable."""

    status = 502
    type = "upstream_error"
    code: str | None = "bad_gateway"


class UpstreamTimeout(UpstreamError):
    """The upstream was silent for longer than its configured timeout."""

    status = 504
    code = "upstream_timeout"


class UpstreamStatusError(UpstreamError):
    """The upstream answered 4xx/5xx; its status and (scrubbed) message are passed on."""

    code: str | None = None
