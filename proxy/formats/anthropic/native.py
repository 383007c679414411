"""Messages answers from an upstream that speaks Messages itself (the pass-through): pure
helpers over Anthropic's own shapes, no chat in sight.

* ``without_unsigned_thinking``: the history with the thinking blocks this proxy made up
  (``THINKING_SIGNATURE``) removed. A real Anthropic-compatible server checks signatures and
  would refuse them; they come from an earlier turn answered through a chat upstream.
* ``message_events``: one JSON ``message`` (an upstream that answered a stream request with
  JSON) as the events Anthropic would have streamed for it.
* ``MessageAccumulator``: a stream's events merged into one ``message`` (a non-stream client
  in front of an upstream that streamed anyway), as the SDK's ``get_final_message`` does.
* ``chat_usage``: Anthropic's usage as chat's, for the proxy's accounting (``prompt_tokens``
  counts cached input too, as chat's does).
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from proxy.errors import UpstreamMalformed, UpstreamTruncated
from proxy.formats.anthropic.response import THINKING_SIGNATURE
from proxy.jsondepth import TOO_DEEP, writable

Body = dict[str, Any]


def without_unsigned_thinking(body: Body) -> Body:
    """``body`` without the thinking blocks signed ``THINKING_SIGNATURE``; the client's body
    itself is left as it is (another attempt may need it)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not any(map(_has_unsigned, messages)):
        return body
    out = dict(body)
    out["messages"] = [
        _strip(message) if _has_unsigned(message) else message for message in messages
    ]
    return out


def _unsigned(block: Any) -> bool:
    return isinstance(block, dict) and block.get("signature") == THINKING_SIGNATURE


def _has_unsigned(message: Any) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and any(map(_unsigned, content))


def _strip(message: Body) -> Body:
    return {**message, "content": [block for block in message["content"] if not _unsigned(block)]}


def chat_usage(usage: Any) -> Body | None:
    """Anthropic's ``usage`` as chat-shaped counts (None unless it has ``output_tokens``)."""
    if not isinstance(usage, dict) or not _count(usage.get("output_tokens")):
        return None
    prompt = sum(
        usage[key]
        for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        if _count(usage.get(key))
    )
    completion = usage["output_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def message_events(message: Body) -> list[Body]:
    """The events of a stream that would have delivered ``message``."""
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    events: list[Body] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(message.get("content") or ()):
        events += _block_events(index, block)
    delta = {
        "stop_reason": message.get("stop_reason"),
        "stop_sequence": message.get("stop_sequence"),
    }
    usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
    events.append({"type": "message_delta", "delta": delta, "usage": usage})
    events.append({"type": "message_stop"})
    return events


def _block_events(index: int, block: Any) -> list[Body]:
    if not isinstance(block, dict):
        raise UpstreamMalformed("The upstream sent a content block that is not an object.")
    kind = block.get("type")
    deltas: list[Body] = []
    if kind in ("text", "thinking"):
        opened: Body = {**block, kind: ""}
        if kind == "thinking":
            opened["signature"] = ""
            deltas.append({"type": "thinking_delta", "thinking": block.get("thinking") or ""})
            deltas.append({"type": "signature_delta", "signature": block.get("signature") or ""})
        else:
            deltas.append({"type": "text_delta", "text": block.get("text") or ""})
    elif kind == "tool_use":
        opened = {**block, "input": {}}
        arguments = orjson.dumps(block.get("input") or {}).decode()
        deltas.append({"type": "input_json_delta", "partial_json": arguments})
    else:  # redacted thinking, server tool blocks...: whole in their start event
        opened = block
    return [
        {"type": "content_block_start", "index": index, "content_block": opened},
        *({"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas),
        {"type": "content_block_stop", "index": index},
    ]


class MessageAccumulator:
    """Merges one stream's events into the ``message`` they deliver."""

    def __init__(self) -> None:
        self.message: Body | None = None
        self.json: dict[int, list[str]] = {}  # a tool_use block's input, as fragments
        self.stopped = False  # message_stop arrived: the message is complete

    def add(self, event: Body) -> None:
        kind = event.get("type")
        if kind == "message_start":
            self.message = copy.deepcopy(event.get("message")) or {}
            self.message["content"] = []
            return
        message = self.message
        if message is None:
            if kind == "ping":
                return
            raise UpstreamMalformed(f"The upstream sent '{kind}' before 'message_start'.")
        if kind == "content_block_start":
            message["content"].append(copy.deepcopy(event.get("content_block")) or {})
        elif kind == "content_block_delta":
            self._delta(event.get("index"), event.get("delta") or {})
        elif kind == "content_block_stop":
            self._stop(event.get("index"))
        elif kind == "message_delta":
            message.update(event.get("delta") or {})
            message["usage"] = {**(message.get("usage") or {}), **(event.get("usage") or {})}
        elif kind == "message_stop":
            self.stopped = True

    def _block(self, index: Any) -> Body:
        assert self.message is not None
        content = self.message["content"]
        if not isinstance(index, int) or not 0 <= index < len(content):
            raise UpstreamMalformed(
                f"The upstream sent an event for a block it did not start ({index!r})."
            )
        return content[index]  # type: ignore[no-any-return]

    def _delta(self, index: Any, delta: Body) -> None:
        block = self._block(index)
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = (block.get("text") or "") + (delta.get("text") or "")
        elif kind == "thinking_delta":
            block["thinking"] = (block.get("thinking") or "") + (delta.get("thinking") or "")
        elif kind == "signature_delta":
            block["signature"] = delta.get("signature") or ""
        elif kind == "input_json_delta":
            self.json.setdefault(index, []).append(delta.get("partial_json") or "")

    def _stop(self, index: Any) -> None:
        block = self._block(index)
        fragments = self.json.pop(index, None)
        if fragments is not None and "".join(fragments).strip():
            raw = "".join(fragments).encode()
            try:
                block["input"] = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise UpstreamMalformed(
                    "The upstream streamed a tool input that is not JSON."
                ) from exc
            if not writable(raw, block["input"]):  # ``proxy.jsondepth``
                raise UpstreamMalformed(f"The upstream streamed a tool input {TOO_DEEP}.")

    def result(self) -> Body:
        """The message; raises ``UpstreamMalformed`` unless the stream was complete."""
        if self.message is None or not self.stopped:
            raise UpstreamTruncated("The upstream ended the stream before 'message_stop'.")
        return self.message
