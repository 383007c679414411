"""The proxy's one exception tree; every error knows how it looks on the wire, what kind of
failure it is and whether another attempt may help.

    ProxyError                      500 server_error
    ├── InvalidRequest              400 invalid_request_error (the bad ``param`` named)
    ├── AuthenticationFailed        401 invalid_api_key
    ├── PermissionDenied            403 (a key's model allowlist)
    ├── NotFound                    404 (unknown route)
    │   └── ModelNotFound           404 model_not_found
    ├── MethodNotAllowed            405
    ├── RequestTimeout              408 (the body trickled in too slowly)
    ├── PayloadTooLarge             413
    ├── ClientDisconnected          499 (the client left mid-upload: nobody reads the answer)
    ├── RateLimited                 429 rate_limit_exceeded (a key's limits)
    ├── LimitsUnavailable           503 limits_unavailable (the limits' backend is down)
    ├── ServiceUnavailable          503 (shutting down; the limits backend is down)
    ├── ModelUnavailable            503 model_unavailable (every deployment rests)
    └── UpstreamError               502; ``kind`` says which failure, ``retry`` what may help
        ├── UpstreamUnreachable     502 upstream_unreachable        connect         retry
        ├── UpstreamConnectionError 502 upstream_connection_error   reset           retry
        ├── UpstreamMalformed       502 upstream_malformed          malformed       retry
        ├── UpstreamTruncated       502 upstream_truncated          truncated       retry
        ├── UpstreamStreamError     502 upstream_stream_error       stream_error    retry
        ├── UpstreamTimeout         504 upstream_timeout            first_byte_timeout retry
        │   ├── UpstreamIdleTimeout     upstream_idle_timeout       idle_timeout    retry
        │   ├── FirstTokenTimeout       upstream_first_token_timeout first_token_timeout retry
        │   └── UpstreamDeadline        upstream_deadline           deadline        never
        └── UpstreamStatusError     the upstream's 4xx/5xx          status          by status

``retry`` is what routing may do about a failure *before the stream commits*: ``RETRY`` (another
attempt, another deployment, the fallbacks), ``CONTEXT`` (only the context-window fallbacks)
or ``NEVER`` (the client gets it as it is). Once content has gone out, nothing is retried.

Before the response has started an error is sent as an HTTP status with the body
``{"error": {"message", "type", "param", "code"}}``; after an SSE stream has started the same
object is sent as one event and the stream ends without its completion marker. Foreign
exceptions (httpx, aiohttp, orjson) are translated into this tree at the one place they can
arise, with the original kept as the cause (``raise ... from exc``).
"""

from __future__ import annotations

import enum
from typing import Any

import orjson


class Kind(enum.StrEnum):
    """What failed upstream: the ``kind`` label of the upstream error metrics."""

    CONNECT = "connect"
    RESET = "reset"
    MALFORMED = "malformed"
    TRUNCATED = "truncated"
    STREAM_ERROR = "stream_error"
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    FIRST_TOKEN_TIMEOUT = "first_token_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    DEADLINE = "deadline"
    STATUS = "status"


class Retry(enum.Enum):
    """What may be tried after this failure, before the stream commits."""

    NEVER = "never"
    RETRY = "retry"  # another attempt or deployment, then the fallbacks
    CONTEXT = "context"  # only the context-window fallbacks


class Outcome(enum.StrEnum):
    """How a request ended, for the access log and the metrics."""

    COMPLETE = "complete"
    REJECTED = "rejected"  # a client error, answered before any upstream call
    UPSTREAM = "upstream"  # an upstream failure; its ``Kind`` says which
    CLIENT_DISCONNECT = "client_disconnect"
    CLIENT_SEND_TIMEOUT = "client_send_timeout"
    SHUTDOWN = "shutdown"
    ERROR = "error"  # the proxy's own fault


class ProxyError(Exception):
    """Base of every error the proxy reports to a client."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None
    kind: Kind | None = None  # set on upstream failures
    retry: Retry = Retry.NEVER

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

    @property
    def outcome(self) -> Outcome:
        return Outcome.UPSTREAM if self.kind is not None else Outcome.ERROR

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


class ClientError(ProxyError):
    """The client's request cannot be served as sent; nothing was asked of an upstream."""

    type = "invalid_request_error"

    @property
    def outcome(self) -> Outcome:
        return Outcome.REJECTED


class InvalidRequest(ClientError):
    """The client's request is malformed; ``param`` names the offending field."""

    status = 400


class AuthenticationFailed(ClientError):
    """Missing or wrong key while keys are configured."""

    status = 401
    code = "invalid_api_key"


class PermissionDenied(ClientError):
    """The key may not use this model."""

    status = 403
    code = "model_not_allowed"


class NotFound(ClientError):
    """No such route."""

    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    """The requested public model name is not configured."""

    code = "model_not_found"


class MethodNotAllowed(ClientError):
    """The route exists but not for this HTTP method."""

    status = 405
    code = "method_not_allowed"


class RequestTimeout(ClientError):
    """The request body did not arrive within ``body_timeout_seconds``."""

    status = 408
    code = "body_timeout"


class PayloadTooLarge(ClientError):
    """The request body exceeds ``max_body_bytes`` (or ``max_upload_bytes``)."""

    status = 413
    code = "request_too_large"


class ClientDisconnected(ClientError):
    """The client went away while sending its body (an upload abandoned halfway). Nobody is left
    to read the answer; the status is nginx's "client closed request", for the access log."""

    status = 499
    code = "client_disconnected"

    @property
    def outcome(self) -> Outcome:
        return Outcome.CLIENT_DISCONNECT


class RateLimited(ClientError):
    """A key is over one of its limits; ``reason`` says which (``requests``, ``tokens`` or
    ``parallel``, for the metrics). OpenAI puts the kind of limit in ``type``: ``requests``
    or ``tokens``; a refusal for ``max_parallel`` has type ``requests``."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        key: str,
        reason: str,
        retry_after: float,
        headers: dict[str, str],
    ) -> None:
        super().__init__(
            message, type="tokens" if reason == "tokens" else "requests", headers=headers
        )
        self.key = key
        self.reason = reason
        self.retry_after = retry_after


class LimitsUnavailable(ProxyError):
    """The limits' backend (Redis) cannot answer and ``on_backend_error`` is ``deny``."""

    status = 503
    type = "server_error"
    code = "limits_unavailable"


class ServiceUnavailable(ProxyError):
    """The proxy is shutting down and takes no new streams."""

    status = 503
    type = "server_error"
    code = "shutting_down"

    @property
    def outcome(self) -> Outcome:
        return Outcome.SHUTDOWN


class ModelUnavailable(ProxyError):
    """No deployment of the model (nor of its fallbacks) may take an attempt: every one rests
    behind its circuit breaker."""

    status = 503
    type = "server_error"
    code = "model_unavailable"

    @property
    def outcome(self) -> Outcome:
        return Outcome.UPSTREAM


class UpstreamError(ProxyError):
    """The upstream could not be reached or answered something unusable."""

    status = 502
    type = "upstream_error"
    code: str | None = "bad_gateway"
    kind: Kind | None = Kind.MALFORMED
    retry = Retry.RETRY


class UpstreamUnreachable(UpstreamError):
    """Refused, unknown host, TLS failure, no connection within ``connect``."""

    code = "upstream_unreachable"
    kind = Kind.CONNECT


class UpstreamConnectionError(UpstreamError):
    """The connection broke: a reset, an incomplete body."""

    code = "upstream_connection_error"
    kind = Kind.RESET


class UpstreamMalformed(UpstreamError):
    """Not HTTP, not JSON, not a chat completion, a bound exceeded."""

    code = "upstream_malformed"
    kind = Kind.MALFORMED


class UpstreamTruncated(UpstreamError):
    """The stream ended before the answer was complete."""

    code = "upstream_truncated"
    kind = Kind.TRUNCATED


class UpstreamStreamError(UpstreamError):
    """The upstream's own error, sent in the stream (or as a 200 JSON body)."""

    code = "upstream_stream_error"
    kind = Kind.STREAM_ERROR


class UpstreamTimeout(UpstreamError):
    """No response headers within ``first_byte``."""

    status = 504
    code = "upstream_timeout"
    kind = Kind.FIRST_BYTE_TIMEOUT


class UpstreamIdleTimeout(UpstreamTimeout):
    """The upstream was silent for longer than ``idle`` in the middle of its body."""

    code = "upstream_idle_timeout"
    kind = Kind.IDLE_TIMEOUT


class FirstTokenTimeout(UpstreamTimeout):
    """No content within ``first_token`` of the request."""

    code = "upstream_first_token_timeout"
    kind = Kind.FIRST_TOKEN_TIMEOUT


class UpstreamDeadline(UpstreamTimeout):
    """The whole answer took longer than ``timeouts.total``: the request's own bound."""

    code = "upstream_deadline"
    kind = Kind.DEADLINE
    retry = Retry.NEVER


# Statuses after which another attempt may succeed (the contract's list, and Anthropic's 529
# "overloaded").
RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})


class UpstreamStatusError(UpstreamError):
    """The upstream answered 4xx/5xx; its status and (scrubbed) message are passed on."""

    code: str | None = None
    kind = Kind.STATUS

    def __init__(self, message: str, *, status: int, **fields: Any) -> None:
        super().__init__(message, status=status, **fields)
        if self.code == "context_length_exceeded":
            self.retry = Retry.CONTEXT
        elif status in RETRIED_STATUSES:
            self.retry = Retry.RETRY
        else:
            self.retry = Retry.NEVER
