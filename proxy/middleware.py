"""Pure-ASGI middleware. Never ``BaseHTTPMiddleware``: it runs the endpoint in another task
and has buffered or broken streaming responses in past Starlette versions."""

from __future__ import annotations

import logging
import re
import time
import uuid

from proxy.asgi import ASGIApp, Message, Receive, Scope, Send, header

_VALID_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
access_log = logging.getLogger("proxy.access")


class RequestID:
    """Accepts a sane ``X-Request-ID`` or makes one; returns it on every response, and logs
    one access line per request when it is over.

    The id is put in ``scope["state"]["request_id"]`` for the endpoint, its logs and the
    upstream request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, b"x-request-id")
        request_id = given if given and _VALID_ID.fullmatch(given) else uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        pair = (b"x-request-id", request_id)
        status = 0
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), pair]
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            client = scope.get("client")
            access_log.info(
                "%s %s %s %s %d %.1fms",
                request_id.decode(),
                client[0] if client else "-",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
            )


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
