"""Pure-ASGI middleware. Never ``BaseHTTPMiddleware``: it runs the endpoint in another task
and has buffered or broken streaming responses in past Starlette versions."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import time

from proxy.asgi import ASGIApp, Message, Receive, Scope, Send, header, send_error
from proxy.errors import ProxyError
from proxy.metrics import Access, Metrics

_VALID_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
access_log = logging.getLogger("proxy.access")


class AccessLog:
    """Gives every request an id and writes one access line when it is over.

    Accepts a sane ``X-Request-ID`` or makes one, and returns it on every response. The
    request's ``Access`` record is put in ``scope["state"]["access"]``; the chat endpoint fills
    in model, upstream, time to first token, chunks, tokens and outcome, and the line (and the
    metrics) are written from it here, so no request is logged twice or not at all.
    """

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
                message["headers"] = [*message.get("headers", ()), pair]
                access.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - access.started
            if self.metrics is not None and access.model is not None:
                self.metrics.finish(access, duration)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info("access", extra={"fields": _fields(access, duration)})


def _fields(access: Access, duration: float) -> dict[str, object]:
    return {
        "request_id": access.request_id,
        "client": access.client,
        "method": access.method,
        "path": access.path,
        "status": access.status,
        "model": access.model,
        "upstream": access.upstream,
        "stream": access.stream,
        "ttft_ms": None if access.ttft is None else round(access.ttft * 1000, 1),
        "duration_ms": round(duration * 1000, 1),
        "chunks": access.chunks if access.stream else None,
        "prompt_tokens": access.prompt_tokens,
        "completion_tokens": access.completion_tokens,
        "outcome": access.outcome,
    }


class RootPath:
    """Serves the app under ``prefix`` too (``/llm/v1/chat/completions``), as a server's
    ``--root-path`` would: Starlette's router strips ``root_path`` from paths that carry it,
    and paths without it (a gateway that stripped it already) still match."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["root_path"] = self.prefix
        await self.app(scope, receive, send)


class TrustedProxies:
    """``X-Forwarded-For`` / ``X-Forwarded-Proto`` believed only from trusted peers.

    The client address becomes the right-most address in ``X-Forwarded-For`` that is not itself
    a trusted proxy. Whether a peer is trusted is computed once per address and cached (parsing
    addresses on every request was a visible cost in the benchmark's profile).
    """

    def __init__(self, app: ASGIApp, trusted: list[str]) -> None:
        self.app = app
        self.any = "*" in trusted
        self.networks = [ipaddress.ip_network(t, strict=False) for t in trusted if t != "*"]
        self.cache: dict[str, bool] = {}

    def trusts(self, host: str) -> bool:
        known = self.cache.get(host)
        if known is None:
            if len(self.cache) > 10_000:
                self.cache.clear()
            try:
                address = ipaddress.ip_address(host)
                known = self.any or any(address in network for network in self.networks)
            except ValueError:
                known = self.any
            self.cache[host] = known
        return known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client and self.trusts(client[0]):
            forwarded = header(scope, b"x-forwarded-for")
            if forwarded:
                hops = [hop.strip() for hop in forwarded.decode("latin-1").split(",")]
                host = next((h for h in reversed(hops) if h and not self.trusts(h)), hops[0])
                scope["client"] = (host, 0)
            proto = header(scope, b"x-forwarded-proto")
            if proto:
                scheme = proto.decode("latin-1").split(",")[-1].strip().lower()
                if scheme in ("http", "https"):
                    websocket = scope["type"] == "websocket"
                    scope["scheme"] = (
                        {"http": "ws", "https": "wss"}[scheme] if websocket else scheme
                    )
        await self.app(scope, receive, send)


class FastPath:
    """Sends the chat endpoint's requests straight to it, past the framework's router and
    exception layers (a measured part of the per-request cost); everything else goes on to
    the app. What the skipped layers did for the chat endpoint is done here: an unexpected
    error becomes a logged 500 in OpenAI's shape."""

    def __init__(self, app: ASGIApp, endpoint: ASGIApp, paths: tuple[str, ...]) -> None:
        self.app = app
        self.endpoint = endpoint
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if scope["type"] != "http" or path not in self.paths:
            await self.app(scope, receive, send)
            return
        try:
            await self.endpoint(scope, receive, send)
        except Exception:
            logging.getLogger("proxy.chat").exception("unexpected error serving %s", path)
            # If the response had started this fails, and the server ends it as incomplete.
            with contextlib.suppress(RuntimeError):
                await send_error(send, ProxyError("The proxy had an internal error."))
