"""What the upload and file endpoints share (``/v1/audio/*``, ``/v1/files``).

Their requests are not one JSON body, so ``endpoints.base.Endpoint`` (which reads and parses
JSON) does not fit them; their story is the same otherwise, in the same order:

1. refuse new work while draining;
2. ``identify``: the key, before a byte of the body is read (a refused client costs nothing);
3. ``accept``: read as much as routing needs (an upload's parts up to its ``model``: see
   ``proxy.forms.upload``) into a ``Call`` with its ``Transfer``, and the routing plan;
4. ``admit``: the one place where the key's allowlist and limits decide, once the model is
   known and before anything is sent upstream; its limits ticket is settled at the end
   (``endpoints.base.settle``), its ``x-ratelimit-*`` headers go on the answer;
5. the relay (a transcript streamed with ``stream=true``) or the pass-through (every other
   answer, passed on as the upstream sent it: ``proxy.passthrough``);
6. however the request ends: the admission settled, and what the upload held freed (its
   temporary file included).

An endpoint lists its ``operations`` (method, path, summary, the form it takes): ``proxy.app``
routes them (also without the ``/v1`` prefix) and documents them in ``/openapi.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from proxy.asgi import Receive, Scope, Send, body_sender
from proxy.endpoints.base import refuse, settle, with_headers
from proxy.errors import ProxyError
from proxy.formats.transfer import TransferFormat
from proxy.forms import Upload
from proxy.keys import Key
from proxy.limits import Ticket
from proxy.observability.access import Access
from proxy.passthrough import Passthrough
from proxy.routing import Plan
from proxy.services import DEFAULT_ANSWER_TOKENS, Services
from proxy.upstreams.base import Call


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path, as routed and documented."""

    method: str
    path: str
    summary: str
    form: dict[str, Any] | None = None  # the multipart fields (JSON schema properties)
    required: tuple[str, ...] = ()

    def openapi(self) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "summary": self.summary,
            "responses": {
                "200": {"description": "The upstream's answer, passed on as it came"},
                "4XX": {"description": "An error in OpenAI's shape"},
            },
        }
        if self.form is not None:
            schema = {"type": "object", "properties": self.form, "required": list(self.required)}
            operation["requestBody"] = {
                "required": True,
                "content": {"multipart/form-data": {"schema": schema}},
            }
        return operation


@dataclass(slots=True)
class Prepared:
    """A request ready for the relay or the pass-through."""

    call: Call
    plan: Plan
    deadline: float | None
    receive: Receive  # for the watchdog: an upload's own (it reads the body itself)
    upload: Upload | None = None


class TransferEndpoint:
    """Base of the upload and file endpoints; see the module docstring."""

    operations: ClassVar[tuple[Operation, ...]]
    format = TransferFormat()

    def __init__(self, services: Services) -> None:
        self.services = services
        self.passthrough = Passthrough.beside(services.relay)

    def paths(self) -> dict[str, list[str]]:
        """Each path and its methods, for the router."""
        paths: dict[str, list[str]] = {}
        for operation in self.operations:
            paths.setdefault(operation.path, []).append(operation.method)
        return paths

    async def accept(self, scope: Scope, receive: Receive) -> Prepared:
        """Read what routing needs; raise ``ProxyError`` (having freed what it held)."""
        raise NotImplementedError

    def identify(self, scope: Scope, access: Access) -> Key:
        """The key, before any byte of the body is read (401 otherwise)."""
        key = self.services.keys.identify(scope)
        access.key = key.name
        return key

    async def admit(self, key: Key, call: Call, access: Access) -> Ticket:
        """Per-key admission, THE place it goes: the call's model is known, nothing has been
        sent upstream yet. The key's allowlist (403, not counted), then its limits (429, or
        503 when they cannot be checked). An upload reserves what an answer would
        (``DEFAULT_ANSWER_TOKENS``): its bytes are audio or a file, not prompt tokens; what the
        upstream reports replaces it when the ticket is settled, however the request ends."""
        return await self.services.admit(key, call.model, DEFAULT_ANSWER_TOKENS, access)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        access: Access = scope["state"]["access"]  # made by the AccessLog middleware
        prepared: Prepared | None = None
        try:
            try:
                self.services.drain.refuse_if_draining()
                key = self.identify(scope, access)
                prepared = await self.accept(scope, receive)
                ticket = await self.admit(key, prepared.call, access)
            except ProxyError as error:
                await refuse(send, self.format, error, access)
                return
            try:
                with_headers(access, ticket)
                await self.serve(prepared, send, access, body_sender(scope, send))
            finally:
                await settle(ticket, access)
        finally:
            if prepared is not None and prepared.upload is not None:
                await prepared.upload.aclose()

    async def serve(self, prepared: Prepared, send: Send, access: Access, body_send: Send) -> None:
        call = prepared.call
        server = self.services.relay if call.stream else self.passthrough
        await server.serve(
            call,
            prepared.plan,
            prepared.deadline,
            self.format,
            prepared.receive,
            send,
            access,
            body_send,
        )
