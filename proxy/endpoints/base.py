"""What every API endpoint does before the relay takes over.

An endpoint is a pure ASGI app on one route of the app's router (``proxy.app``). Its story:
refuse new work while draining; check the key before reading the body (a refused client
costs nothing); read the body within its size and time limits; parse the JSON; let the
endpoint's ``parse`` validate it into a ``Call``; get the model's routing plan; hand over to
the relay. A subclass names its path, its request schema (for ``/openapi.json``), its format, and
writes ``parse``.

Pure ASGI rather than a FastAPI route: the body is read by us (the size limit holds while
reading, bad bodies get the API's own error shape, never FastAPI's 422), and the relay writes
each event as its own ASGI message.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import BaseModel

from proxy.asgi import Receive, Scope, Send, header, send_json
from proxy.endpoints.body import content_length, parse_json, read_body
from proxy.errors import ProxyError
from proxy.observability.access import Access
from proxy.relay import Format
from proxy.routing import Plan
from proxy.services import Services
from proxy.upstreams.base import Call

body_log = logging.getLogger("proxy.bodies")


class Endpoint:
    """Base of the API endpoints; see the module docstring."""

    path: ClassVar[str]
    summary: ClassVar[str]
    schema: ClassVar[type[BaseModel]]  # the request body, as documented
    format: ClassVar[Format]

    def __init__(self, services: Services) -> None:
        self.services = services

    def parse(self, body: dict[str, Any], request_id: str) -> Call:
        """Validate ``body`` (raise ``InvalidRequest`` naming the param) into a ``Call``."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        access: Access = scope["state"]["access"]  # made by the AccessLog middleware
        try:
            call, plan = await self.accept(scope, receive)
        except ProxyError as error:
            access.end(error.outcome, error.kind)
            await send_json(send, error.status, self.format.error_body(error), error.headers)
            return
        deadline = self.services.router.deadline(call.model)
        await self.services.relay.serve(call, plan, deadline, self.format, receive, send, access)

    async def accept(self, scope: Scope, receive: Receive) -> tuple[Call, Plan]:
        services = self.services
        services.drain.refuse_if_draining()
        services.auth.check(scope)  # before reading the body: a refused client costs nothing
        settings = services.settings
        body = await read_body(
            receive,
            settings.max_body_bytes,
            content_length(header(scope, b"content-length")),
            settings.body_timeout_seconds,
        )
        request_id: str = scope["state"]["request_id"]
        if settings.log_bodies:
            text = services.scrubber.text(body.decode("utf-8", "replace"))
            body_log.info("body", extra={"fields": {"request_id": request_id, "body": text}})
        call = self.parse(parse_json(body), request_id)
        return call, services.router.plan(call.model)
