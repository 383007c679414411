"""Anthropic's Messages API as the relay writes it (``MessagesFormat``), and its translation
to chat completions for an upstream that does not speak it (``TranslatedExchange``).

Each attempt decides for itself (``MessagesFormat.exchange``): an upstream whose ``apis``
include ``messages`` gets the client's request as it is and its events are passed through
(``formats.messages_native``); any other gets a chat call (``anthropic.messages_to_chat``,
with the upstream's ``thinking`` switch) whose chunks become Messages events
(``anthropic.MessagesStream``).

Streams open with ``message_start``, and it is sent at once: it is the stream's preamble
(``relay.StreamFormat.preamble``), which the relay sends as soon as the upstream has answered,
never after the first token. A retry or a fallback after it does not open the message again.
The events one upstream chunk becomes (e.g. ``content_block_stop`` of the text and
``content_block_start`` of a tool call) exist at the same moment and are written together.

Errors are Anthropic's ``{"type": "error", "error": {"type", "message"}}``, as an HTTP body
(with the right status) before the stream started and as ``event: error`` after it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import orjson

from proxy.errors import ProxyError
from proxy.formats.anthropic import (
    MessagesStream,
    count_tokens,
    encode_event,
    error_body,
    message_from_completion,
    messages_to_chat,
    new_message_id,
)
from proxy.formats.chat import ChatExchange, reply_chunks
from proxy.formats.chunks import StreamNormalizer
from proxy.formats.messages_native import NativeExchange
from proxy.upstreams.base import Call, Reply, Route

if TYPE_CHECKING:
    from proxy.relay import Exchange

# Anthropic's own keepalive, byte for byte as its API writes it.
PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def native(route: Route) -> bool:
    """Does the route's upstream speak Messages itself (``apis: [..., messages]``)?"""
    return "messages" in route.upstream.apis


class MessagesFormat:
    """The Messages API, for the relay (``relay.Format``)."""

    ping = PING

    @staticmethod
    def exchange(call: Call, route: Route) -> Exchange:
        if native(route):
            return NativeExchange(call)
        return TranslatedExchange(call, route)

    @staticmethod
    def error_body(error: ProxyError) -> bytes:
        return orjson.dumps(error_body(error))

    @staticmethod
    def error_event(error: ProxyError) -> bytes:
        return encode_event(error_body(error))


def encode_events(events: list[dict[str, Any]]) -> bytes:
    return b"".join(encode_event(event) for event in events)


def thinking_style(route: Route) -> str:
    """The upstream's reasoning switch (HTTP upstreams' ``thinking`` setting; others: none)."""
    return str(getattr(route.upstream, "thinking", "none"))


class TranslatedExchange:
    """One attempt of a Messages call against a chat upstream."""

    __slots__ = ("call", "message_id", "messages_body", "stops", "usage")

    def __init__(self, call: Call, route: Route) -> None:
        body = messages_to_chat(call.body, thinking=thinking_style(route))
        self.call = dataclasses.replace(
            call, api="chat", body=body, include_usage=call.stream, headers={}
        )
        self.messages_body = call.body
        self.message_id = new_message_id()
        stops = call.body.get("stop_sequences")
        self.stops: list[str] = stops if isinstance(stops, list) else []
        self.usage: dict[str, Any] | None = None  # chat-shaped, once complete() answered

    def stream(self) -> TranslatedStream:
        events = MessagesStream(
            message_id=self.message_id,
            model=self.call.model,
            input_tokens=count_tokens(self.messages_body),
            stop_sequences=self.stops,
        )
        return TranslatedStream(self.call.model, events)

    def items(self, reply: Reply) -> Any:
        return reply_chunks(reply, self.call.model)

    async def complete(self, reply: Reply) -> dict[str, Any]:
        completion = await ChatExchange(self.call).complete(reply)
        self.usage = completion.get("usage")
        return message_from_completion(
            completion, message_id=self.message_id, model=self.call.model, stop_sequences=self.stops
        )


class TranslatedStream:
    """Chat chunks -> Messages events (``relay.StreamFormat``, with a preamble)."""

    __slots__ = ("committed", "events", "normalizer")

    def __init__(self, model: str, events: MessagesStream) -> None:
        # include_usage: the usage chunk must reach MessagesStream (message_delta's usage).
        self.normalizer = StreamNormalizer(model, include_usage=True)
        self.events = events
        self.committed = False  # a content block (or the message's end) went out

    def preamble(self) -> bytes | None:
        """``message_start``, the first time it is asked for."""
        events = self.events.start()
        return encode_events(events) if events else None

    def feed(self, item: Any) -> bytes | None:
        chunk = self.normalizer.normalize(item)
        if chunk is None:
            return None
        events = self.events.feed(chunk)
        if not events:
            return None
        if not self.committed:
            self.committed = any(event["type"] != "message_start" for event in events)
        return encode_events(events)

    def end(self) -> bytes:
        self.normalizer.check_complete()  # no finish_reason: truncated, not a clean end
        return encode_events(self.events.finish())

    def error(self, error: ProxyError) -> bytes:
        self.events.fail(error)  # nothing may follow the error event
        return MessagesFormat.error_event(error)

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.normalizer.usage
