"""A Responses call passed through to an upstream that speaks Responses natively (OpenAI,
recent vLLM): each event re-framed as OpenAI frames it, as it arrives.

What the proxy changes on the way (``upstreams.responses_events`` did the wire-level part):

- ``model``: the upstream's name in the request (``upstreams.openai``), the public name in
  every ``response`` object of the answer;
- ``sequence_number``: renumbered 0, 1, 2, ... (the client must see no gap, and a server may
  number from 1, skip, or send none);
- nothing else: unknown events and fields pass untouched, in the upstream's key order.

The stream commits at the first event that is not ``response.created``, ``.queued`` or
``.in_progress`` (an output item, a terminal event): those three are held back by the relay,
and an upstream ``error`` or ``response.failed`` before the commit is a failure that may be
retried or fallen over. After the commit the upstream's own failure event is passed on as the
stream's last event; a failure of the connection itself ends the stream with a
``response.failed`` built from the last ``response`` seen.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

from proxy.errors import ProxyError, UpstreamMalformed, UpstreamStreamError, UpstreamTruncated
from proxy.formats.responses_objects import frames, responses_error
from proxy.upstreams.base import Call, Reply

Json = dict[str, Any]

HELD = frozenset({"response.created", "response.queued", "response.in_progress"})
FAILED = frozenset({"error", "response.failed"})
DONE = frozenset({"response.completed", "response.incomplete"})
TERMINAL = DONE | FAILED


def failure(event: Json) -> UpstreamStreamError:
    """The error an upstream ``error`` / ``response.failed`` event stands for."""
    response = event.get("response")
    details = response.get("error") if isinstance(response, dict) else event.get("error")
    if not isinstance(details, dict):
        details = event
    message = details.get("message") or event.get("message") or "The upstream's response failed."
    param = details.get("param")
    return UpstreamStreamError(str(message), param=None if param is None else str(param))


class NativeStream:
    """One passed-through Responses stream; see the module docstring."""

    __slots__ = ("committed", "ended", "model", "response", "sequence", "tail", "usage_seen")

    def __init__(self, model: str) -> None:
        self.model = model
        self.committed = False
        self.ended = False  # a terminal event went out: nothing more is passed on
        self.sequence = 0
        self.response: Json | None = None  # the last response object seen
        self.tail = b""  # the upstream's own failure event, passed on after the commit
        self.usage_seen: Json | None = None

    def feed(self, item: Any) -> bytes | None:
        if self.ended:
            return None
        kind = _type(item)
        if kind in FAILED and not self.committed:
            raise failure(item)
        frame = frames([self.normalize(item, kind)])
        if kind in FAILED:  # after the commit: the upstream's event is the stream's last
            self.ended, self.tail = True, frame
            raise failure(item)
        if kind not in HELD:
            self.committed = True
        self.ended = kind in DONE
        return frame

    def normalize(self, event: Json, kind: str) -> Json:
        """The public model and the next sequence number (first, as OpenAI orders it)."""
        if "sequence_number" not in event:
            event = {"type": kind, "sequence_number": 0, **event}
        event["sequence_number"] = self.sequence
        self.sequence += 1
        response = event.get("response")
        if isinstance(response, dict):
            response["model"] = self.model
            self.response = response
            if isinstance(response.get("usage"), dict):
                self.usage_seen = response["usage"]
        return event

    def end(self) -> bytes:
        if not self.ended:
            raise UpstreamTruncated(
                "The upstream ended the stream before the response was complete."
            )
        return b""

    def error(self, error: ProxyError) -> bytes:
        """After the commit: the upstream's failure event if it sent one, else a
        ``response.failed`` of our own (nothing at all after a complete response)."""
        if self.tail or self.ended:
            return self.tail
        self.ended = True
        response = dict(self.response or _blank(self.model))
        response.update(status="failed", error=responses_error(error), model=self.model)
        return frames(
            [self.normalize({"type": "response.failed", "response": response}, "response.failed")]
        )

    @property
    def usage(self) -> dict[str, Any] | None:
        return chat_usage(self.usage_seen)


class NativeExchange:
    """One attempt of a Responses call against a native Responses upstream."""

    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call

    def stream(self) -> NativeStream:
        return NativeStream(self.call.model)

    def items(self, reply: Reply) -> Any:
        if reply.chunks is not None:
            return _until_terminal(reply.chunks)
        return _replay(_response(reply.completion, self.call.model))

    async def complete(self, reply: Reply) -> Json:
        """The upstream's ``response`` object (the final one of its stream, if it streamed)."""
        if reply.completion is not None:
            return _response(reply.completion, self.call.model)
        assert reply.chunks is not None
        async for event in reply.chunks:
            kind = _type(event)
            if kind in FAILED:
                raise failure(event)
            if kind in DONE:
                return _response(event.get("response"), self.call.model)
        raise UpstreamTruncated("The upstream ended the stream before the response was complete.")


def chat_usage(usage: Json | None) -> Json | None:
    """Responses usage in chat's names, for the proxy's accounting."""
    if not isinstance(usage, dict):
        return None
    return {
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens"),
        "total_tokens": usage.get("total_tokens"),
    }


def _type(event: Any) -> str:
    kind = event.get("type") if isinstance(event, dict) else None
    if not isinstance(kind, str) or not kind or "\n" in kind or "\r" in kind:
        raise UpstreamMalformed("The upstream sent a Responses event without a valid type.")
    return kind


def _response(response: Any, model: str) -> Json:
    if not isinstance(response, dict) or not isinstance(response.get("output"), list):
        raise UpstreamMalformed("The upstream sent JSON that is not a Responses response.")
    response["model"] = model
    return response


async def _until_terminal(events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The upstream's events up to its terminal one: a server that keeps the connection open
    after it must not keep the client's stream open too."""
    async for event in events:
        yield event
        if isinstance(event, dict) and event.get("type") in TERMINAL:
            return


async def _replay(response: Json) -> AsyncIterator[Json]:
    """A whole ``response`` (an upstream that answered JSON to a stream request) as the events
    a stream of it would have had: its items added and done, then its terminal event."""
    start = {**response, "status": "in_progress", "output": [], "usage": None}
    yield {"type": "response.created", "response": start}
    yield {"type": "response.in_progress", "response": start}
    for index, item in enumerate(response["output"]):
        yield {"type": "response.output_item.added", "output_index": index, "item": item}
        yield {"type": "response.output_item.done", "output_index": index, "item": item}
    status = response.get("status")
    kind = "response.incomplete" if status == "incomplete" else "response.completed"
    yield {"type": "response.failed" if status == "failed" else kind, "response": response}


def _blank(model: str) -> Json:
    """A response object for a stream that failed before the upstream sent one."""
    return {
        "id": "resp_" + os.urandom(24).hex(),
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "output": [],
    }
