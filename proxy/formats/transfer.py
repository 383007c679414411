"""The wire format of uploads and file requests (``/v1/audio/*``, ``/v1/files``), for the relay
and for ``proxy.passthrough``.

Their answers are passed on as the upstream sent them (``RawBody``), with one exception: a
transcription asked for with ``stream=true`` streams like every other API, through the relay.
OpenAI's transcript stream is ``data:`` events of ``transcript.text.delta`` (``delta``: the
next words), then one ``transcript.text.done`` (``text``: the whole transcript, ``usage``);
diarizing models add ``transcript.text.segment``. The stream commits at its first delta with
text (as chat commits at its first content), is complete only with its ``done`` event (else
``upstream_truncated``), and ends without ``[DONE]``, as OpenAI's does. An upstream that
answers a streaming request with one JSON (or text) anyway is turned into the two events.

Nothing is translated: an upstream that does not serve the API (``apis`` in its config)
cannot take the call, and the attempt fails with a 400 naming it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson

from proxy.errors import InvalidRequest, ProxyError, UpstreamMalformed, UpstreamTruncated
from proxy.formats.openai_shape import OpenAIShape
from proxy.jsondepth import TOO_DEEP, writable
from proxy.sse import MAX_EVENT, encode_event
from proxy.upstreams.base import Call, Reply, Route
from proxy.upstreams.transfer import RawBody

DELTA = "transcript.text.delta"
DONE = "transcript.text.done"
SEGMENT = "transcript.text.segment"


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """A transcription's token usage (``input_tokens``/``output_tokens``, OpenAI's ``type:
    tokens``) in the chat shape the access log and the limits count; None otherwise (a
    ``duration`` usage counts seconds, not tokens)."""
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage:
        return usage
    if "input_tokens" not in usage:
        return None
    return {
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens", 0),
    }


class TranscriptStream:
    """One streamed transcript (``relay.StreamFormat``)."""

    __slots__ = ("_usage", "committed", "done")

    def __init__(self) -> None:
        self.committed = False
        self.done = False
        self._usage: dict[str, Any] | None = None

    def feed(self, item: Any) -> bytes | None:
        if not isinstance(item, dict):
            raise UpstreamMalformed("The upstream sent a transcript event that is not an object.")
        kind = item.get("type")
        if (kind == DELTA and item.get("delta")) or kind == SEGMENT:
            self.committed = True
        elif kind == DONE:
            self.committed = self.done = True
            self._usage = chat_usage(item.get("usage"))
        return encode_event(item)

    def end(self) -> bytes:
        if not self.done:
            raise UpstreamTruncated(
                f"The upstream's transcript stream ended before its '{DONE}' event."
            )
        return b""

    def error(self, error: ProxyError) -> bytes:
        return encode_event(error.to_dict())

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._usage


class TransferExchange:
    """One attempt: the call goes as it is (``relay.Exchange``)."""

    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call

    def stream(self) -> TranscriptStream:
        return TranscriptStream()

    def items(self, reply: Reply) -> Any:
        if reply.chunks is not None:
            return reply.chunks
        return _as_events(reply)

    async def complete(self, reply: Reply) -> dict[str, Any]:
        """The transcript as one JSON (the relay's non-stream path; ``proxy.passthrough``
        passes non-stream answers on as they are instead)."""
        text, usage = "", None
        async for item in self.items(reply):
            if isinstance(item, dict) and item.get("type") == DONE:
                text, usage = str(item.get("text", "")), item.get("usage")
        return {"text": text, "usage": usage} if usage else {"text": text}


class TransferFormat(OpenAIShape):
    """Uploads and file requests, for the relay and the pass-through (``relay.Format``)."""

    @staticmethod
    def exchange(call: Call, route: Route) -> TransferExchange:
        if call.api not in route.upstream.apis:
            raise InvalidRequest(
                f"The upstream '{route.upstream_name}' does not serve the {call.api} API "
                f"(its apis in the config)."
            )
        return TransferExchange(call)


async def read_all(raw: RawBody, limit: int = MAX_EVENT) -> bytes:
    """A whole (small) passed-on body, at most ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    async for data in raw.chunks:
        size += len(data)
        if size > limit:
            raise UpstreamMalformed(f"The upstream answered more than {limit} bytes.")
        parts.append(data)
    return b"".join(parts)


async def _as_events(reply: Reply) -> AsyncGenerator[dict[str, Any], None]:
    """A one-piece answer (JSON with ``text``, or plain text) as a delta and a done event."""
    payload: Any = reply.completion
    if reply.raw is not None:
        body = await read_all(reply.raw)
        kind = reply.raw.headers.get("content-type", "")
        payload = _json(body) if "json" in kind else {"text": body.decode("utf-8", "replace")}
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise UpstreamMalformed("The upstream's transcription has no 'text'.")
    text = payload["text"]
    yield {"type": DELTA, "delta": text}
    done = {"type": DONE, "text": text}
    if payload.get("usage") is not None:
        done["usage"] = payload["usage"]
    yield done


def _json(body: bytes) -> Any:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamMalformed("The upstream answered invalid JSON.") from exc
    if not writable(body, value):  # read, but not writable on (``proxy.jsondepth``)
        raise UpstreamMalformed(f"The upstream answered JSON {TOO_DEEP}.")
    return value
