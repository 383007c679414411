"""A Messages call passed through to an upstream that speaks Messages itself (vLLM, llama.cpp,
Ollama, Anthropic): event by event, with the model names mapped both ways.

What the upstream gets: the client's body with its own model name (``upstreams.openai``), the
thinking blocks this proxy made up removed from the history (``anthropic.native``), and the
client's ``anthropic-version``/``anthropic-beta`` headers (``Call.headers``, set by the
endpoint), never the client's key.

What the client gets: each upstream event re-framed as ``event: <type>\\ndata: <json>\\n\\n``,
its ``message_start`` as the stream's preamble (sent at once, ``relay``), the public model name
in it; the upstream's ``ping`` events are dropped (the proxy pings on silence itself). An
upstream ``error`` event is an ``UpstreamStreamError`` (``upstreams.failures``): before the
first content block it is retried or fallen over like any failure, after it the client gets
it as the stream's last event. A stream that ends without ``message_stop`` is truncated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from proxy.errors import ProxyError, UpstreamMalformed, UpstreamTruncated
from proxy.formats.anthropic import encode_event, error_body
from proxy.formats.anthropic.native import (
    MessageAccumulator,
    chat_usage,
    message_events,
    without_unsigned_thinking,
)
from proxy.upstreams.base import Call, Reply


class NativeExchange:
    """One attempt of a Messages call against an upstream that speaks Messages."""

    __slots__ = ("call", "usage")

    def __init__(self, call: Call) -> None:
        self.call = dataclasses.replace(call, body=without_unsigned_thinking(call.body))
        self.usage: dict[str, Any] | None = None  # chat-shaped, once complete() answered

    def stream(self) -> NativeStream:
        return NativeStream(self.call.model)

    def items(self, reply: Reply) -> Any:
        if reply.chunks is not None:
            return reply.chunks
        return _iterate(message_events(as_message(reply.completion, self.call.model)))

    async def complete(self, reply: Reply) -> dict[str, Any]:
        if reply.chunks is None:
            message = as_message(reply.completion, self.call.model)
        else:  # the upstream streamed anyway (force_stream): merged
            accumulator = MessageAccumulator()
            async for event in reply.chunks:
                accumulator.add(event)
            message = as_message(accumulator.result(), self.call.model)
        self.usage = chat_usage(message.get("usage"))
        return message


def as_message(payload: Any, model: str) -> dict[str, Any]:
    """An upstream's JSON answer, checked to be a ``message``, under the public model name."""
    if not isinstance(payload, dict) or payload.get("type") != "message":
        raise UpstreamMalformed("The upstream answered JSON that is not a Messages 'message'.")
    if not isinstance(payload.get("content"), list):
        raise UpstreamMalformed("The upstream answered a message without a content list.")
    payload["model"] = model
    return payload


class NativeStream:
    """The upstream's events, passed through (``relay.StreamFormat``, with a preamble)."""

    __slots__ = ("_preamble", "_usage", "committed", "model", "started", "stopped")

    def __init__(self, model: str) -> None:
        self.model = model
        self.committed = False  # an event after message_start went out
        self.started = False  # message_start arrived
        self.stopped = False  # message_stop arrived: the answer is complete
        self._preamble: bytes | None = None
        self._usage: dict[str, Any] = {}

    def preamble(self) -> bytes | None:
        """The upstream's ``message_start``, once it has arrived (and once)."""
        preamble, self._preamble = self._preamble, None
        return preamble

    def feed(self, item: Any) -> bytes | None:
        kind = item.get("type") if isinstance(item, dict) else None
        if not isinstance(kind, str):
            raise UpstreamMalformed("The upstream sent an event without a type.")
        if kind == "ping":
            return None
        if kind == "message_start":
            self._start(item)
            return None
        if not self.started:
            raise UpstreamMalformed(f"The upstream sent '{kind}' before 'message_start'.")
        if kind == "message_delta":
            self._count(item.get("usage"))
        elif kind == "message_stop":
            self.stopped = True
        self.committed = True
        return encode_event(item)

    def _start(self, event: dict[str, Any]) -> None:
        message = event.get("message")
        if self.started or not isinstance(message, dict):
            raise UpstreamMalformed("The upstream sent a second or malformed 'message_start'.")
        self.started = True
        message["model"] = self.model
        self._count(message.get("usage"))
        self._preamble = encode_event(event)

    def _count(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self._usage.update(usage)

    def end(self) -> bytes:
        if not self.stopped:
            raise UpstreamTruncated("The upstream ended the stream before 'message_stop'.")
        return b""

    def error(self, error: ProxyError) -> bytes:
        return encode_event(error_body(error))

    @property
    def usage(self) -> dict[str, Any] | None:
        return chat_usage(self._usage) if self.stopped else None


async def _iterate(events: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for event in events:
        yield event
