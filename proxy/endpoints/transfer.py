"""What the upload and file endpoints share (``/v1/audio/*``, ``/v1/files``).

Their requests are not one JSON body, so ``endpoints.base.Endpoint`` (which reads and parses
JSON) does not fit them; their story is the same otherwise, in the same order:

1. refuse new work while draining;
2. ``identify``: the key, before a byte of the body is read (a refused client costs nothing);
3. ``accept``: read as much as routing needs (an upload's parts up to its ``model``: see
   ``proxy.forms.upload``) into a ``Call`` with its ``Transfer``, and the routing plan;
4. ``admit``: the one place where the key's allowlist and limits decide, once the model is
   known and before anything is sent upstream; what it returns is settled at the end;
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

from proxy.asgi import Message, Receive, Scope, Send, send_json
from proxy.errors import ProxyError
from proxy.formats.transfer import TransferFormat
from proxy.forms import Upload
from proxy.observability.access import Access
from proxy.passthrough import Passthrough
from proxy.routing import Plan
from proxy.services import Services
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


class Admission:
    """What admitting a request gave: ``headers`` for its answer, and ``settle`` at its end.
    Today there is nothing to count (keys are checked by ``identify``); per-key limits replace
    it in ``TransferEndpoint.admit``."""

    headers: ClassVar[dict[str, str]] = {}

    async def settle(self, access: Access) -> None:
        return None


class TransferEndpoint:
    """Base of the upload and file endpoints; see the module docstring."""

    operations: ClassVar[tuple[Operation, ...]]
    format = TransferFormat()

    def __init__(self, services: Services) -> None:
        self.services = services
        self.passthrough = Passthrough(services.relay)

    def paths(self) -> dict[str, list[str]]:
        """Each path and its methods, for the router."""
        paths: dict[str, list[str]] = {}
        for operation in self.operations:
            paths.setdefault(operation.path, []).append(operation.method)
        return paths

    async def accept(self, scope: Scope, receive: Receive) -> Prepared:
        """Read what routing needs; raise ``ProxyError`` (having freed what it held)."""
        raise NotImplementedError

    def identify(self, scope: Scope) -> Any:
        """The key, before any byte of the body is read (401 otherwise). What this returns
        is handed to ``admit``."""
        self.services.auth.check(scope)
        return None

    async def admit(self, key: Any, call: Call, access: Access) -> Admission:
        """Per-key admission: THE place it goes. ``key`` is what ``identify`` returned; the
        call's model is known (``call.model`` is "" for ``/v1/files``, which names none),
        nothing has been sent upstream yet; raise ``ProxyError`` (403, 429, 503) to refuse.
        What this returns is settled however the request ends."""
        return Admission()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        access: Access = scope["state"]["access"]  # made by the AccessLog middleware
        prepared: Prepared | None = None
        try:
            try:
                self.services.drain.refuse_if_draining()
                key = self.identify(scope)
                prepared = await self.accept(scope, receive)
                admission = await self.admit(key, prepared.call, access)
            except ProxyError as error:
                access.end(error.outcome, error.kind)
                await send_json(send, error.status, self.format.error_body(error), error.headers)
                return
            try:
                await self.serve(prepared, _with_headers(send, admission.headers), access)
            finally:
                await admission.settle(access)
        finally:
            if prepared is not None and prepared.upload is not None:
                await prepared.upload.aclose()

    async def serve(self, prepared: Prepared, send: Send, access: Access) -> None:
        call = prepared.call
        server = self.services.relay if call.stream else self.passthrough
        await server.serve(
            call, prepared.plan, prepared.deadline, self.format, prepared.receive, send, access
        )


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    """``send`` adding ``headers`` (an admission's) to the response's start."""
    if not headers:
        return send
    extra = [(name.lower().encode(), value.encode()) for name, value in headers.items()]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return sending
