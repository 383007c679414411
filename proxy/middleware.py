"""Pure-ASGI middleware. Never ``BaseHTTPMiddleware``: it runs the endpoint in another task
and has buffered or broken streaming responses in past Starlette versions."""

from __future__ import annotations

import re
import uuid

from proxy.asgi import ASGIApp, Message, Receive, Scope, Send, header

_VALID_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")


class RequestID:
    """Accepts a sane ``X-Request-ID`` or makes one; returns it on every response.

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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), pair]
            await send(message)

        await self.app(scope, receive, send_with_id)
