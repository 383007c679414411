"""One multipart upload on its way through the proxy.

    upload = Upload(ClientBody(receive, ...), boundary, routed=True)
    await upload.hold()                     # read ahead until the route is known
    plan = router.plan(upload.model)
    ... each attempt: upload.body(route's model) -> the upstream request body ...
    await upload.aclose()                   # on every way the request ends

**Hold.** Parts are read and held (re-encoded, in a ``Spool``: memory up to 2 MiB, then an
unlinked temporary file) until the ``model`` field has arrived (a file sent before it is
spooled, never held whole in memory) and either the body has ended or more than ``HOLD``
(1 MiB) are held. A small upload is thus read whole before anything is sent; a large one is
held only up to its model, in memory when the model comes first.

**Send.** Each attempt's body (``body(model)``) is the ``model`` field with the route's name
for the model, the held parts, then the rest of the client's parts re-encoded the moment they
arrive, then the closing boundary. Its length is known only when everything is held
(``length``): the upstream then gets a ``Content-Length``, otherwise chunked framing.

**Retry.** An attempt may be repeated while every byte it sent is still held (``replayable``):
always for a small upload, until the first byte read live otherwise. After that the client's
bytes are gone, so a failure is final (README "Uploads": the retry policy).

**Form rules.** Fields are collected as they pass (a value's first ``FIELD_VALUE`` bytes), for
routing (``model``), the answer's shape (``stream``) and the logs: ``model`` and ``stream``
always, other fields and the parts' names only the first ``MAX_KEPT`` (a form of 100,000 text
fields is streamed on like a file, not kept: every field kept grew the process by its size).
``stream`` is decided when sending begins: a ``stream`` arriving later (after a large file)
that says otherwise is a 400, as is a second ``model``, a missing required part (``file``), or
malformed multipart. Every failure is kept in ``failure`` (the HTTP layer sees the body fail
only as a broken connection) and ends the reading, so the watchdog may listen for disconnects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

from proxy.asgi import Message
from proxy.errors import InvalidRequest, ProxyError
from proxy.forms.body import ClientBody
from proxy.forms.encoding import PART_TAIL, closing, content_type, field, new_boundary, part_head
from proxy.forms.parser import PART_END, Event, FormParser, PartStart
from proxy.forms.spool import Spool

HOLD = 1024 * 1024  # bytes held before sending begins (once the model is known)
FIELD_VALUE = 4096  # bytes of a field's value kept to read it
MAX_KEPT = 64  # fields (besides model and stream) and parts whose names are kept, for the logs
ROUTING = frozenset({"model", "stream"})  # the fields always kept
TRUE = frozenset({"true", "1", "yes", "on"})  # "stream" values that mean yes (requests: "True")


class Upload:
    """See the module docstring. ``routed``: the form's ``model`` picks the route (audio);
    otherwise the form is passed on as it is (files)."""

    def __init__(
        self,
        body: ClientBody,
        boundary: bytes,
        *,
        routed: bool = True,
        required: tuple[str, ...] = ("file",),
    ) -> None:
        self._body = body
        self._parser = FormParser(boundary)
        self._routed = routed
        self._required = required
        self.boundary = new_boundary()
        self.content_type = content_type(self.boundary)
        self.fields: dict[str, str] = {}  # text fields (first value of each name; MAX_KEPT)
        self.seen: list[PartStart] = []  # the parts, in order (the first MAX_KEPT)
        self._present: set[str] = set()  # which of the required parts and model have come
        self.stream = False  # the form asked for a streamed answer (decided when sending)
        self.complete = False  # the client's body has ended: everything is held
        self.live = False  # a byte read live has gone to an attempt: no attempt can be repeated
        self.failure: ProxyError | None = None
        self._held = Spool()
        self._pending: deque[Event] = deque()
        self._part: PartStart | None = None
        self._value = bytearray()
        self._sending = False

    @property
    def model(self) -> str | None:
        return self.fields.get("model")

    @property
    def replayable(self) -> bool:
        return not self.live

    @property
    def spooled(self) -> bool:
        """Part of what is held went to a temporary file."""
        return self._held.on_disk

    async def hold(self) -> None:
        """Read ahead (see the module docstring); raises ``InvalidRequest`` without a model."""
        try:
            while not self.complete and (self._held.size < HOLD or self._needs_model):
                event = await self._next()
                if event is None:
                    self._finish()
                else:
                    self._held.write(self._take(event))
            if self._needs_model:
                raise InvalidRequest(
                    "Missing required parameter: 'model'.",
                    param="model",
                    code="missing_required_parameter",
                )
        except ProxyError as error:
            raise self._failed(error) from None
        self.stream = self.fields.get("stream", "").strip().lower() in TRUE
        self._sending = True

    @property
    def _needs_model(self) -> bool:
        return self._routed and self.model is None

    def length(self, model: str) -> int | None:
        """The length of ``body(model)``, when everything is held."""
        if not self.complete:
            return None
        head = len(field(self.boundary, "model", model)) if self._routed else 0
        return head + self._held.size + len(closing(self.boundary))

    async def body(self, model: str) -> AsyncIterator[bytes]:
        """One attempt's request body; ``model``: the route's name for the model."""
        try:
            if self._routed:
                yield field(self.boundary, "model", model)
            for data in self._held.chunks():
                yield data
            while not self.complete:
                event = await self._next()
                self.live = True
                if event is None:
                    self._finish()
                elif data := self._take(event):
                    yield data
            yield closing(self.boundary)
        except ProxyError as error:
            raise self._failed(error) from None

    async def watch(self) -> Message:
        """``receive`` for the request's watchdog (``ClientBody.watch``)."""
        return await self._body.watch()

    async def aclose(self) -> None:
        """The request is over: free what is held (the temporary file goes with it)."""
        self._body.close()
        self._held.close()
        # Raised, the failure's traceback holds frames that hold this upload: kept, a cycle
        # (with what was read) for the collector, proxy/heap.py.
        self.failure = None

    async def _next(self) -> Event | None:
        """The next part event; None at the end of the body."""
        while not self._pending:
            data = await self._body.read()
            if not data:
                return None
            self._pending.extend(self._parser.feed(data))
        return self._pending.popleft()

    def _take(self, event: Event) -> bytes:
        """What ``event`` becomes in our body (the routed ``model`` field: nothing, it is
        sent per attempt), collecting field values on the way."""
        if isinstance(event, PartStart):
            self._start(event)
            return b"" if self._dropped(event) else part_head(self.boundary, event)
        part = self._part
        assert part is not None  # the parser only sends data and ends inside a part
        if event is PART_END:
            self._end(part)
            return b"" if self._dropped(part) else PART_TAIL
        assert isinstance(event, bytes)
        if len(self._value) <= FIELD_VALUE:
            self._value += event[: FIELD_VALUE + 1 - len(self._value)]
        return b"" if self._dropped(part) else event

    def _dropped(self, part: PartStart) -> bool:
        return self._routed and part.name == "model"

    def _start(self, part: PartStart) -> None:
        if part.name == "model" and "model" in self._present:
            raise InvalidRequest("The form has more than one 'model' field.", param="model")
        self._part = part
        self._value.clear()
        if part.name == "model" or part.name in self._required:
            self._present.add(part.name)
        if len(self.seen) < MAX_KEPT:
            self.seen.append(part)

    def _end(self, part: PartStart) -> None:
        value = self._value.decode("utf-8", "replace")
        if part.name == "model" and len(self._value) > FIELD_VALUE:
            raise InvalidRequest("The 'model' field is too long.", param="model")
        if (part.filename is None or part.name == "model") and (
            part.name in ROUTING or len(self.fields) < MAX_KEPT
        ):
            self.fields.setdefault(part.name, value)
        late = part.name == "stream" and self._sending
        if late and (value.strip().lower() in TRUE) != self.stream:
            raise InvalidRequest(
                "The form's 'stream' field must come before the file (it decides the "
                "answer's shape, which is chosen when the upload starts to go upstream).",
                param="stream",
            )
        self._part = None

    def _finish(self) -> None:
        """The body ended: it must be complete and have every required part."""
        self._parser.finish()
        self.complete = True
        for name in self._required:
            if name not in self._present:
                raise InvalidRequest(
                    f"Missing required parameter: '{name}'.",
                    param=name,
                    code="missing_required_parameter",
                )

    def _failed(self, error: ProxyError) -> ProxyError:
        """Keep the first failure, and stop reading: the watchdog may listen now."""
        if self.failure is None:
            self.failure = error
        self._body.close()
        return self.failure
