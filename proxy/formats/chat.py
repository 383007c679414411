"""The chat completions API as the relay writes it: ``ChatStream`` for a streaming client,
``ChatExchange.complete`` for the one JSON answer of a non-stream client.

Chunk shapes (normalising, aggregating, converting) are in ``formats.chunks``.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import ProxyError
from proxy.formats.chunks import (
    Aggregator,
    Chunk,
    StreamNormalizer,
    completion_to_chunks,
    estimate_usage,
    normalize_completion,
)
from proxy.formats.openai_shape import OpenAIShape
from proxy.sse import DONE, encode_event
from proxy.upstreams.base import Call, Reply, Route


def has_content(chunk: Chunk) -> bool:
    """Does a (normalised) chunk carry part of the answer? Content, reasoning, a refusal, tool
    calls or a finish_reason commit a stream; a role-only chunk does not."""
    for choice in chunk["choices"]:
        if choice.get("finish_reason"):
            return True
        delta = choice.get("delta") or {}
        if (
            delta.get("content")
            or delta.get("reasoning_content")
            or delta.get("refusal")
            or delta.get("tool_calls")
        ):
            return True
    return False


class ChatStream:
    """One chat completions stream, written as OpenAI writes it: ``data: <json>`` events, a
    usage chunk if asked for, ``data: [DONE]``. See ``relay.StreamFormat``."""

    __slots__ = ("committed", "include_usage", "messages", "normalizer")

    def __init__(self, call: Call) -> None:
        self.normalizer = StreamNormalizer(call.model, call.include_usage)
        self.include_usage = call.include_usage
        self.messages = call.body.get("messages") or []
        self.committed = False  # a chunk with content went out

    def feed(self, item: Any) -> bytes | None:
        out = self.normalizer.normalize(item)
        if out is None:
            return None
        if not self.committed and has_content(out):
            self.committed = True
        return b"data: " + orjson.dumps(out) + b"\n\n"

    def end(self) -> bytes:
        self.normalizer.check_complete()
        if self.include_usage and self.normalizer.usage is None:
            return encode_event(self.normalizer.usage_chunk(self.messages)) + DONE
        return DONE

    def error(self, error: ProxyError) -> bytes:
        return ChatFormat.error_event(error)

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.normalizer.usage


class ChatExchange:
    """One attempt of a chat call against a chat upstream: nothing to translate."""

    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call

    def stream(self) -> ChatStream:
        return ChatStream(self.call)

    def items(self, reply: Reply) -> Any:
        return reply_chunks(reply, self.call.model)

    async def complete(self, reply: Reply) -> Chunk:
        """The one ``chat.completion`` for a non-stream client, whatever the upstream sent."""
        call = self.call
        if reply.completion is not None:
            completion = normalize_completion(reply.completion, call.model)
        else:
            completion = await aggregate(call, reply)
        if not completion.get("usage"):  # as for streams: an estimate, marked as one
            texts = [
                choice["message"]["content"]
                for choice in completion["choices"]
                if isinstance(choice.get("message"), dict)
                and isinstance(choice["message"].get("content"), str)
            ]
            completion["usage"] = estimate_usage(call.body.get("messages") or [], texts)
        return completion


class ChatFormat(OpenAIShape):
    """The chat completions API, for the relay (``relay.Format``)."""

    @staticmethod
    def exchange(call: Call, route: Route) -> ChatExchange:
        return ChatExchange(call)


async def aggregate(call: Call, reply: Reply) -> Chunk:
    """A stream merged into one ``chat.completion`` (a stream-only upstream, a client that
    asked for no stream)."""
    normalizer = StreamNormalizer(call.model, include_usage=True)
    aggregator = Aggregator()
    assert reply.chunks is not None
    async for chunk in reply.chunks:
        out = normalizer.normalize(chunk)
        if out is not None:
            aggregator.add(out)
    normalizer.check_complete()
    return aggregator.result()


def reply_chunks(reply: Reply, public_model: str) -> Any:
    """The reply as chunks to stream, converting a one-JSON answer for a streaming client."""
    if reply.chunks is not None:
        return reply.chunks  # iterated directly: no extra generator layer per chunk
    return _iterate(completion_to_chunks(normalize_completion(reply.completion, public_model)))


async def _iterate(chunks: list[Chunk]) -> Any:
    for chunk in chunks:
        yield chunk
