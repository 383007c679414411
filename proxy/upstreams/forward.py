"""Sending a ``Transfer`` (an upload, a file request) to an HTTP upstream, and its answer back.

**The upload's clock.** ``HTTPClient.post`` bounds the wait for the response head by
``first_byte``, which for an upload would include sending the whole body: a 500 MB file on a
slow link would time out however healthy both ends are. An upload is timed in three parts
instead, by one timer that the body rescheduled as it goes (``_Pace``):

- reading from the client: the client's own bound (``body_timeout_seconds`` without a byte:
  408, ``proxy.forms.body``);
- handing a piece to the upstream: ``timeouts.write`` (an upstream that stops reading: 504);
- after the last byte, until the response head: ``timeouts.first_byte``, as for any request.

**Errors.** When the client's side fails (413, 408, a disconnect, bad multipart) the HTTP
client only sees its body break, and reports a broken connection: the form's own failure is
raised instead, and the upstream request is aborted (its connection closed). A failure once a
byte read live from the client has been sent cannot be retried: it is marked ``NEVER``.

**Answers.** A streamed answer to a streaming call becomes SSE items, as for chat; everything
else (JSON, text, srt, vtt, a file's bytes) is passed on as a ``RawBody``, read as it arrives,
each read bounded by ``timeouts.idle``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from proxy.errors import ProxyError, Retry, UpstreamTimeout
from proxy.sse import Event
from proxy.upstreams.base import Call, Reply, Route
from proxy.upstreams.http import HTTPClient
from proxy.upstreams.transfer import PASSED_HEADERS, Form, RawBody, Transfer
from proxy.upstreams.wire import WireResponse

STREAM_ACCEPT = "text/event-stream, application/json"
RAW_ACCEPT = "*/*"


async def forward(
    client: HTTPClient, url: str, call: Call, route: Route, parse: Callable[[Event], Any]
) -> Reply:
    """Send ``call.transfer`` to ``url`` (the API's base URL); return once the upstream has
    answered. ``parse``: how this upstream's SSE events become items."""
    transfer = call.transfer
    assert transfer is not None
    target = url + transfer.path + (f"?{transfer.query}" if transfer.query else "")
    accept = STREAM_ACCEPT if call.stream else RAW_ACCEPT
    if transfer.form is None:
        headers = {"accept": accept}
        response = await client.post(
            target, b"", request_id=call.request_id, headers=headers, method=transfer.method
        )
    else:
        response = await send_form(
            client, target, transfer, route.upstream_model, call.request_id, accept
        )
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if call.stream and kind == "text/event-stream":
        return Reply(chunks=client.events(response, parse), closers=[response.aclose])
    chunks = client.chunks(response)
    passed = {name: response.headers[name] for name in PASSED_HEADERS if name in response.headers}
    raw = RawBody(response.status, passed, chunks)
    return Reply(raw=raw, closers=[response.aclose, chunks.aclose])


async def send_form(
    client: HTTPClient, url: str, transfer: Transfer, model: str, request_id: str, accept: str
) -> WireResponse:
    """POST the form (see the module docstring: its clock and its errors)."""
    form = transfer.form
    assert form is not None
    headers = {**client.headers, "content-type": form.content_type, "accept": accept}
    if request_id:
        headers["x-request-id"] = request_id
    length = form.length(model)
    if length is not None:  # everything is held: the upstream gets the length up front
        headers["content-length"] = str(length)
    pace = _Pace(client)
    try:
        with client.errors("first_byte"):
            async with asyncio.timeout(None) as timer:
                pace.timer = timer
                body = pace.body(form.body(model))
                timeouts = client.timeouts
                response = await client.wire.send(url, headers, body, timeouts, transfer.method)
    except ProxyError as error:
        final = _final(form.failure or pace.error(error), form)
        if final is error:
            raise  # as it was: raised "from" itself, it would be its own cause, a cycle
        raise final from error
    finally:
        pace.timer = None
    try:
        with client.errors("idle"):
            await client._check(response)  # the status and encoding checks of every request
    except ProxyError as error:
        await response.aclose()
        _final(error, form)
        raise
    except BaseException:
        await response.aclose()
        raise
    return response


class _Pace:
    """The upload's clock (see the module docstring): one ``asyncio.timeout`` in the task
    that sends, rescheduled by the body (which the HTTP client iterates in a task of its own)."""

    def __init__(self, client: HTTPClient) -> None:
        self.client = client
        self.timer: asyncio.Timeout | None = None
        self.phase = "read"

    async def body(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        timeouts = self.client.timeouts
        async for data in chunks:  # waiting on the client: its own bound, none here
            self._set("write", timeouts.write)
            yield data
            self._set("read", None)
        self._set("first_byte", timeouts.first_byte)

    def _set(self, phase: str, seconds: float | None) -> None:
        timer = self.timer
        if timer is None or timer.expired():
            return
        self.phase = phase
        when = None if seconds is None else asyncio.get_running_loop().time() + seconds
        timer.reschedule(when)

    def error(self, error: ProxyError) -> ProxyError:
        """The timer's expiry, said as what it was."""
        if isinstance(error, UpstreamTimeout) and self.phase == "write":
            return self.client.scrubber.error(
                UpstreamTimeout(
                    f"The upstream '{self.client.name}' stopped taking the upload for more "
                    f"than {self.client.timeouts.write:g} s."
                )
            )
        return error


def _final(error: ProxyError, form: Form) -> ProxyError:
    """An error that no other attempt can help once the client's bytes are spent."""
    if not form.replayable and error.retry is not Retry.NEVER:
        error.retry = Retry.NEVER
    return error
