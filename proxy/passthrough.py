"""The pass-through: ``relay.Relay``'s sibling for answers passed on as they came.

Uploads and file requests are answered with whatever the upstream sent: a transcript as JSON,
text, srt or vtt, a file object, a file's bytes (however large). The relay cannot write those
(it writes SSE, or JSON it built), so this does, around the same pieces: the routing plan's
attempts until an upstream answers, a ``Watchdog`` for the client leaving or not reading, the
request's deadline and the shutdown, the access record and the metrics.

- The answer's status and ``content-type`` (``content-length``, ``content-disposition``) are
  the upstream's; the body goes on the moment it arrives, one ASGI message a read, never
  gathered (the client's reads pace the upstream's, so a 500 MB download costs no memory).
- An attempt succeeds once the upstream's response head is in: until then every failure may be
  retried or fallen over (as far as the call can be sent again: ``proxy.upstreams.forward``);
  after it the answer is the client's. A body that breaks after that cannot be told in the
  body's own format: the connection is aborted, so the client sees a truncated response,
  never a complete-looking one.
- A stuck client is dropped after ``keepalive_seconds + send_timeout_seconds`` without a
  completed write, as for streams (the watchdog's ping is empty here: nothing is added to the
  body).
- A JSON answer's usage (a transcription's tokens) is read from its first 1 MiB for the access
  log and the limits; the body itself is passed on untouched. A file's content, its object
  or its list is not an answer: whatever fields it has are not read as usage.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from proxy.asgi import Send, header_value
from proxy.errors import ProxyError
from proxy.formats.transfer import chat_usage
from proxy.observability.access import Access
from proxy.relay import Format, Relay, ended_by, send_last, served_headers, uncancel
from proxy.routing import Attempt, Plan
from proxy.upstreams.base import Call, Reply
from proxy.watchdog import Watchdog

log = logging.getLogger(__name__)

USAGE_BYTES = 1024 * 1024  # bytes of a JSON answer kept to read its usage


class Passthrough(Relay):
    """See the module docstring. One per app, with the relay's settings (``beside``)."""

    pings = False  # nothing may be added to a body passed on as it came

    @classmethod
    def beside(cls, relay: Relay) -> Passthrough:
        return cls(
            drain=relay.drain,
            metrics=relay.metrics,
            keepalive=relay.keepalive,
            send_timeout=relay.send_timeout,
        )

    async def answer(
        self, call: Call, plan: Plan, api: Format, send: Send, watchdog: Watchdog, access: Access
    ) -> None:
        """The first upstream to answer, its answer passed on as it came."""
        opened: tuple[Attempt, Reply] | None = None
        try:
            opened = await _open(call, plan, api)
            access.answered(opened[0])
            served = served_headers(plan, opened[0])
            # Only an answer carries usage (a transcription's JSON); a file's content is data,
            # whatever fields it has: read as usage, a download was charged to the key's tpm.
            answer = call.api != "files"
            await _write(opened[1], served, send, watchdog, access, answer)
        except ProxyError as error:  # no attempt was answered: the last error, as HTTP
            access.end(error.outcome, error.kind)
            await send_last(send, watchdog, api.error_body(error), error.status, error.headers)
        except asyncio.CancelledError:
            if watchdog.reason is None:
                raise
            uncancel()
            ending = ended_by(watchdog, watchdog.deadline_seconds, access)
            if ending is not None and not watchdog.headers_sent:
                await send_last(send, watchdog, api.error_body(ending), ending.status)
        finally:
            if opened is not None:
                opened[0].release()
                await opened[1].aclose()


async def _open(call: Call, plan: Plan, api: Format) -> tuple[Attempt, Reply]:
    """The plan's attempts until an upstream answers; raises the last error if none does."""
    async for attempt in plan:
        reply: Reply | None = None
        try:
            exchange = api.exchange(call, attempt.route)
            reply = await attempt.route.upstream.open(exchange.call, attempt.route)
        except ProxyError as error:
            if reply is not None:
                await reply.aclose()
            plan.failed(attempt, error)
            continue
        except BaseException:
            attempt.release()
            raise
        plan.succeeded(attempt)
        return attempt, reply
    raise AssertionError("a plan ends by raising")  # pragma: no cover


async def _write(
    reply: Reply,
    served: dict[str, str],
    send: Send,
    watchdog: Watchdog,
    access: Access,
    answer: bool = True,
) -> None:
    """The answer as it came; see the module docstring for a body that breaks."""
    if reply.raw is None:  # an upstream that answered a dict (none today): as JSON
        body = orjson.dumps(reply.completion)
        if answer:
            access.count_tokens(chat_usage((reply.completion or {}).get("usage")))
        await send_last(send, watchdog, body, 200, served)
        return
    raw = reply.raw
    passed = {**raw.headers, **served}.items()
    headers = [(name.encode(), header_value(value)) for name, value in passed]
    watchdog.start_keepalive()  # from here a client that stops reading is dropped
    await send({"type": "http.response.start", "status": raw.status, "headers": headers})
    usage = _UsageTap(raw.headers.get("content-type", "") if answer else "")  # "": keeps none
    write = watchdog.body_send
    try:
        async for data in raw.chunks:
            usage.feed(data)
            await write({"type": "http.response.body", "body": data, "more_body": True})
            watchdog.wrote()
    except ProxyError as error:
        access.end(error.outcome, error.kind)
        log.warning("the upstream's answer broke after it began: %s", error.message)
        return  # the response is left unfinished: the server aborts the connection
    access.count_tokens(usage.usage())
    await watchdog.stop_keepalive()
    await send_last(send, watchdog, b"")


class _UsageTap:
    """Keeps the first ``USAGE_BYTES`` of a JSON answer to read its usage at the end."""

    __slots__ = ("_parts", "_size")

    def __init__(self, content_type: str) -> None:
        self._parts: list[bytes] | None = [] if "json" in content_type.lower() else None
        self._size = 0

    def feed(self, data: bytes) -> None:
        if self._parts is not None:
            self._size += len(data)
            if self._size > USAGE_BYTES:
                self._parts = None
            else:
                self._parts.append(data)

    def usage(self) -> dict[str, Any] | None:
        if not self._parts:
            return None
        try:
            payload = orjson.loads(b"".join(self._parts))
        except orjson.JSONDecodeError:
            return None
        return chat_usage(payload.get("usage")) if isinstance(payload, dict) else None
