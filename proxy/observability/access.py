"""The access record of one request, and the middleware that writes its one log line.

``AccessLog`` gives every request an id (a sane ``X-Request-ID`` of the client's, or a new
one), returns it on every response, puts an ``Access`` record in ``scope["state"]["access"]``
for the endpoint and the relay to fill in (model, upstream, time to first token, chunks,
tokens, outcome), and when the request is over writes the access line and the metrics from
it, so no request is logged twice or not at all.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.asgi import ASGIApp, Message, Receive, Scope, Send, header
from proxy.errors import Kind, Outcome
from proxy.formats.chunks import valid_usage
from proxy.observability.metrics import Metrics

if TYPE_CHECKING:
    from proxy.routing import Attempt, Plan

_VALID_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
access_log = logging.getLogger("proxy.access")


@dataclass(slots=True)
class Access:
    """What the access log line and the metrics say about one request."""

    request_id: str
    client: str
    method: str
    path: str
    started: float  # time.perf_counter() when the request arrived
    status: int = 0
    model: str | None = None
    upstream: str | None = None
    stream: bool | None = None
    ttft: float | None = None  # seconds from the request to the first content written
    chunks: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    outcome: Outcome = Outcome.COMPLETE
    kind: Kind | None = None  # which upstream failure, when outcome is UPSTREAM
    answered_by: str | None = None  # the deployment that answered (upstream/model)
    answered_as: str | None = None  # the public model that answered (a fallback's name)
    key: str | None = None  # the client key's name (never the key)
    limited: str | None = None  # refused by a limit: requests, tokens or parallel
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (deployment, ok|kind)
    retries: int = 0
    fallbacks: list[str] = field(default_factory=list)
    # More response headers (a limited key's x-ratelimit-*), added to the response's start by
    # the AccessLog middleware with x-request-id: no send wrapper of its own on every chunk.
    headers: list[tuple[bytes, bytes]] | None = None

    def answered(self, attempt: Attempt) -> None:
        self.upstream = attempt.route.upstream_name
        self.answered_by = attempt.deployment.name
        self.answered_as = attempt.model

    def routed(self, plan: Plan) -> None:
        """What the routing plan did for this request (every attempt, retries, fallbacks)."""
        self.attempts = plan.attempts
        self.retries = plan.retries
        self.fallbacks = plan.fallbacks
        if self.upstream is None and plan.attempts:
            self.upstream = plan.attempts[-1][0].split("/", 1)[0]

    def end(self, outcome: Outcome, kind: Kind | None = None) -> None:
        self.outcome, self.kind = outcome, kind

    def count_tokens(self, usage: Any) -> None:
        """Tokens as the upstream reported them; an estimate is not a report."""
        if isinstance(usage, dict) and "input_tokens" in usage:  # a Responses answer's names
            usage = {
                "prompt_tokens": usage.get("input_tokens"),
                "completion_tokens": usage.get("output_tokens"),
                "estimated": usage.get("estimated"),
            }
        if isinstance(usage, dict) and not usage.get("estimated") and valid_usage(usage):
            self.prompt_tokens = usage.get("prompt_tokens")
            self.completion_tokens = usage.get("completion_tokens")

    @property
    def outcome_name(self) -> str:
        """``complete``, ``rejected``, ``upstream_<kind>``, ``client_disconnect``..."""
        if self.outcome is Outcome.UPSTREAM and self.kind is not None:
            return f"upstream_{self.kind}"
        return str(self.outcome)

    def fields(self, duration: float) -> dict[str, object]:
        return {
            "request_id": self.request_id,
            "client": self.client,
            "key": self.key,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "model": self.model,
            "upstream": self.upstream,
            "stream": self.stream,
            "ttft_ms": None if self.ttft is None else round(self.ttft * 1000, 1),
            "duration_ms": round(duration * 1000, 1),
            "chunks": self.chunks if self.stream else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "outcome": self.outcome_name,
            "limited": self.limited,
            "attempts": len(self.attempts) or None,
            "tried": ",".join(f"{name}:{result}" for name, result in self.attempts) or None,
            "answered_as": self.answered_as if self.answered_as != self.model else None,
        }


class AccessLog:
    """Pure-ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, b"x-request-id")
        request_id = (
            given if given and _VALID_ID.fullmatch(given) else os.urandom(16).hex().encode()
        )
        client = scope.get("client")
        access = Access(
            request_id=request_id.decode(),
            client=client[0] if client else "-",
            method=scope["method"],
            path=scope["path"],
            started=time.perf_counter(),
        )
        state = scope.setdefault("state", {})
        state["request_id"] = access.request_id
        state["access"] = access
        pair = (b"x-request-id", request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), pair, *(access.headers or ())]
                access.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - access.started
            if self.metrics is not None:
                self.metrics.finish(access, duration)  # by key, and by model when known
            if access_log.isEnabledFor(logging.INFO):
                access_log.info("access", extra={"fields": access.fields(duration)})
