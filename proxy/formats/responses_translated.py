"""A Responses call answered by a chat completions upstream: the request translated to chat
(``responses_request``), the chat chunks translated into the Responses event lifecycle
(``responses_stream``), for the relay (``relay.Exchange``, ``relay.StreamFormat``).

When the stream commits: at the first chunk carrying part of the answer (content, reasoning,
a tool call, a finish_reason: ``formats.chat.has_content``), as for chat. ``response.created``
and ``response.in_progress`` come out of the first (role) chunk and are held back by the relay
until then, so a failure before any content is retried or fallen over without the client ever
seeing a response id that then goes nowhere (README "POST /v1/responses").
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from proxy.errors import ProxyError
from proxy.formats.chat import ChatExchange, has_content, reply_chunks
from proxy.formats.chunks import StreamNormalizer
from proxy.formats.responses_objects import frames, new_response_id
from proxy.formats.responses_request import chat_request
from proxy.formats.responses_stream import ResponsesStream, response_from_completion
from proxy.upstreams.base import Call, Reply

Json = dict[str, Any]


class TranslatedStream:
    """Chat chunks in (raw, as the upstream sent them), Responses frames out."""

    __slots__ = ("committed", "events", "messages", "normalizer")

    def __init__(self, chat: Call, request: Json) -> None:
        self.normalizer = StreamNormalizer(chat.model, include_usage=True)
        self.messages = chat.body["messages"]
        self.events = ResponsesStream(
            response_id=new_response_id(),
            model=chat.model,
            request=request,
            created_at=int(time.time()),
        )
        self.committed = False

    def feed(self, item: Any) -> bytes | None:
        chunk = self.normalizer.normalize(item)
        if chunk is None:
            return None
        if not self.committed and has_content(chunk):
            self.committed = True
        return frames(self.events.feed(chunk)) or None

    def end(self) -> bytes:
        """The ``.done`` events and the terminal one, with usage: the upstream's, which may
        have come after the finish_reason, or an estimate if it sent none."""
        self.normalizer.check_complete()
        if self.normalizer.usage is None:
            self.events.feed(self.normalizer.usage_chunk(self.messages))
        return frames(self.events.finish())

    def error(self, error: ProxyError) -> bytes:
        return frames(self.events.fail(error))

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.normalizer.usage


class TranslatedExchange:
    """One attempt of a Responses call against a chat completions upstream."""

    __slots__ = ("call", "request")

    def __init__(self, call: Call) -> None:
        self.request = call.body
        body = chat_request(call.body)  # InvalidRequest (400) for what chat cannot carry
        self.call = dataclasses.replace(
            call,
            api="chat",
            body=body,
            include_usage=True,  # the final event carries usage
            max_tokens=body.get("max_tokens"),
        )

    def stream(self) -> TranslatedStream:
        return TranslatedStream(self.call, self.request)

    def items(self, reply: Reply) -> Any:
        return reply_chunks(reply, self.call.model)

    async def complete(self, reply: Reply) -> Json:
        """One ``response`` object, from the chat completion (aggregated if it streamed)."""
        completion = await ChatExchange(self.call).complete(reply)
        return response_from_completion(
            completion,
            response_id=new_response_id(),
            model=self.call.model,
            request=self.request,
            created_at=completion["created"],
        )
