"""What every API endpoint does before the relay takes over.

An endpoint is a pure ASGI app on one route of the app's router (``proxy.app``). Its story:
refuse new work while draining; identify the key before reading the body (a refused client
costs nothing); read the body within its size and time limits; parse the JSON; let the
endpoint's ``parse`` validate it into a ``Call``; get the model's routing plan; admit it under
the key's allowlist and limits (``Services.admit``); hand over to the relay; and, however the
request ends, settle its limits ticket with the tokens the upstream reported. The ticket's
``x-ratelimit-*`` headers go on every answer. A subclass names its path, its request schema
(for ``/openapi.json``), its format, and writes ``parse``.

Pure ASGI rather than a FastAPI route: the body is read by us (the size limit holds while
reading, bad bodies get the API's own error shape, never FastAPI's 422), and the relay writes
each event as its own ASGI message.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import BaseModel

from proxy.asgi import Receive, Scope, Send, body_sender, header, send_json
from proxy.endpoints.body import content_length, parse_json, read_body
from proxy.errors import Outcome, ProxyError, RateLimited
from proxy.limits import Ticket
from proxy.observability.access import Access
from proxy.relay import Format
from proxy.routing import Plan
from proxy.services import Services, reservation
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

    def prepare(self, call: Call, plan: Plan, scope: Scope) -> None:
        """What an endpoint checks or adds once the route is known, before anything is
        counted against the key (raise ``InvalidRequest``: not admitted, not counted)."""

    def reserve(self, body_size: int, call: Call) -> int:
        """The tokens to reserve against the key's ``tpm`` until the answer's real figure is
        known: the request's own and its answer's (``services.reservation``). An endpoint
        whose answer generates no tokens says so (embeddings, token counts): reserving 1024
        for an answer that never comes turned their concurrent requests into 429s."""
        return reservation(body_size, call.max_tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        access: Access = scope["state"]["access"]  # made by the AccessLog middleware
        try:
            call, plan, ticket = await self.accept(scope, receive, access)
        except ProxyError as error:
            await refuse(send, self.format, error, access)
            return
        try:
            deadline = self.services.router.deadline(call.model)
            with_headers(access, ticket)
            await self.services.relay.serve(
                call, plan, deadline, self.format, receive, send, access, body_sender(scope, send)
            )
        finally:
            await settle(ticket, access)

    async def accept(
        self, scope: Scope, receive: Receive, access: Access
    ) -> tuple[Call, Plan, Ticket]:
        services = self.services
        services.drain.refuse_if_draining()
        key = services.keys.identify(
            scope
        )  # before reading the body: a refused client costs nothing
        access.key = key.name
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
        plan = services.router.plan(call.model)
        self.prepare(call, plan, scope)
        tokens = self.reserve(len(body), call)
        return call, plan, await services.admit(key, call.model, tokens, access)


def with_headers(access: Access, ticket: Ticket) -> None:
    """Add the ticket's headers to the response's start (the AccessLog middleware writes
    them)."""
    headers = ticket.raw_headers()
    if headers:
        access.headers = headers


async def refuse(send: Send, api: Format, error: ProxyError, access: Access) -> None:
    """Answer a request refused before the relay (bad input, a key, a limit, draining)."""
    access.end(error.outcome, error.kind)
    if isinstance(error, RateLimited):
        access.limited = error.reason
    await send_json(send, error.status, api.error_body(error), error.headers)


async def settle(ticket: Ticket, access: Access) -> None:
    """End a request's limits ticket: the tokens the upstream reported; if it reported none
    but answered, the reservation stays charged; nothing if it never answered."""
    if access.prompt_tokens is not None or access.completion_tokens is not None:
        await ticket.settle((access.prompt_tokens or 0) + (access.completion_tokens or 0))
    elif access.ttft is not None or access.outcome is Outcome.COMPLETE:
        await ticket.settle(None)
    else:
        await ticket.release()
