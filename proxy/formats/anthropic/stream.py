"""Chat completion chunks -> Anthropic Messages stream events (``MessagesStream``).

One ``MessagesStream`` per streamed request. It returns events as dicts (the SSE event name
is their ``"type"``; ``encode_event`` frames one), emitted as the chunks arrive and never
held back. It is built against the known failures of other translators:

* ``message_start`` comes from ``start()``, once, before any chunk: nothing waits for the
  first token or for thinking to end. A second ``start()`` returns nothing.
* Every content block is opened by its first real content (the first chunk's text included,
  even when it rides on the role chunk), closed with ``content_block_stop`` before the next
  opens, and indexed 0, 1, 2... Reasoning goes only into ``thinking`` blocks, text only into
  ``text`` blocks. No delta is ever empty; an empty or role-only chunk emits nothing.
* Each tool call is a ``tool_use`` block whose ``input_json_delta`` fragments concatenate to
  the upstream's ``arguments`` exactly, the fragments that arrive with the id and name
  included. One exception, on purpose: whitespace before the first JSON character is held
  back and sent with it, because the SDK parses its buffer after every delta (jiter, partial
  mode) and a whitespace-only buffer is a parse error there.
* A thinking block ends with a ``signature_delta`` (``THINKING_SIGNATURE``, see
  ``response``); it also starts with ``"signature": ""``, so a snapshot taken mid-stream is
  already a valid ``ThinkingBlock``.
* ``message_delta`` comes only from ``finish()``, so it carries the upstream's usage even
  when that arrived in a chunk after the ``finish_reason``.

A tool call is identified by its ``index`` and ``id``: a fragment with a new ``id`` starts a
new call even at a reused ``index`` (some OpenAI-compatible servers number every call 0). A
fragment for a call whose block was already closed cannot be delivered (blocks do not
reopen) and raises ``UpstreamError``, as does a new call without a name: both would lose
arguments silently otherwise.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import ProxyError, UpstreamError
from proxy.formats.anthropic.errors import error_body
from proxy.formats.anthropic.response import (
    THINKING_SIGNATURE,
    delta_usage,
    new_tool_id,
    stop_reason,
)
from proxy.formats.chunks import estimate_tokens

Event = dict[str, Any]


def encode_event(event: Event) -> bytes:
    """One SSE frame as Anthropic writes it: ``event: <type>`` then ``data: <json>``."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def ping_event() -> Event:
    """The keepalive event Anthropic sends while the model is silent."""
    return {"type": "ping"}


class MessagesStream:
    """Turns one stream's chat chunks into Anthropic events; see the module docstring."""

    __slots__ = (
        "_block", "_closed_tools", "_done", "_finish", "_id", "_index", "_input_tokens",
        "_json_started", "_json_whitespace", "_matched", "_model", "_started", "_stops",
        "_texts", "_tool_id", "_tool_key", "_tool_used", "_usage",
    )  # fmt: skip

    def __init__(
        self,
        *,
        message_id: str,
        model: str,
        input_tokens: int = 0,
        stop_sequences: list[str] | None = None,
    ) -> None:
        self._id = message_id
        self._model = model
        self._input_tokens = input_tokens
        self._stops = tuple(stop_sequences or ())
        self._started = False
        self._done = False  # finish() or fail() ended the stream: nothing more is emitted
        self._index = -1  # of the block started last
        self._block: str | None = None  # the open block's type
        self._tool_key: int | None = None  # the open tool call's chat index and id
        self._tool_id: str | None = None
        self._closed_tools: set[int | str] = set()  # indexes and ids of closed tool calls
        self._json_started = False  # the open tool call sent its first JSON character
        self._json_whitespace = ""
        self._tool_used = False
        self._finish: Any = None
        self._matched: Any = None  # vLLM's stop_reason: the stop string that matched
        self._usage: dict[str, Any] | None = None
        self._texts: list[str] = []  # to estimate output tokens if the upstream reports none

    @property
    def usage(self) -> dict[str, Any] | None:
        """The chat-shaped usage the upstream reported last (None until it does)."""
        return self._usage

    def start(self) -> list[Event]:
        """``message_start``, to be sent at once; empty if already sent."""
        if self._started:
            return []
        self._started = True
        message: Event = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self._input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        }
        return [{"type": "message_start", "message": message}]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        """The events for one normalised chat chunk (its first choice only)."""
        if self._done:
            return []
        events = self.start()
        usage = chunk.get("usage")
        if isinstance(usage, dict) and usage:
            self._usage = usage
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._choice(choice, events)
        return events

    def finish(self) -> list[Event]:
        """The upstream ended cleanly: close the open block, ``message_delta``,
        ``message_stop``."""
        if self._done:
            return []
        events = self.start()
        events += self._close_block()
        self._done = True
        reason, sequence = stop_reason(
            self._finish, self._matched, self._stops, tool_used=self._tool_used
        )
        output_estimate = estimate_tokens("".join(self._texts)) if self._usage is None else 0
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": delta_usage(self._usage, output_estimate),
            }
        )
        events.append({"type": "message_stop"})
        return events

    def fail(self, error: ProxyError) -> list[Event]:
        """The stream failed after it started: one ``error`` event, and nothing after it."""
        if self._done:
            return []
        self._done = True
        return [error_body(error)]

    # -- one choice -------------------------------------------------------------------------

    def _choice(self, choice: dict[str, Any], events: list[Event]) -> None:
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self._append("thinking", reasoning, events)
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                self._append("text", text, events)
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                self._tool_call(call, events)
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
            self._matched = choice.get("stop_reason")

    def _append(self, kind: str, text: str, events: list[Event]) -> None:
        """Text or thinking, in a block of that type (opened if another one is open)."""
        if self._block != kind:
            block = {"type": kind, kind: ""}
            if kind == "thinking":
                block["signature"] = ""
            self._open_block(block, events)
        events.append(self._delta({"type": f"{kind}_delta", kind: text}))
        self._texts.append(text)

    def _tool_call(self, call: dict[str, Any], events: list[Event]) -> None:
        key = call.get("index") if isinstance(call.get("index"), int) else None
        call_id = call.get("id") or None
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        if not self._continues(key, call_id):
            self._start_tool(key, call_id, function.get("name"), events)
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # some upstreams send the object itself
            arguments = orjson.dumps(arguments).decode()
        if isinstance(arguments, str) and arguments:
            self._arguments(arguments, events)

    def _continues(self, key: int | None, call_id: str | None) -> bool:
        """Whether a fragment belongs to the open tool call."""
        if self._block != "tool_use":
            return False
        if call_id is not None and call_id != self._tool_id:
            return False
        return key is None or self._tool_key is None or key == self._tool_key

    def _start_tool(
        self, key: int | None, call_id: str | None, name: Any, events: list[Event]
    ) -> None:
        if (call_id if call_id is not None else key) in self._closed_tools:
            raise UpstreamError(
                "The upstream sent more arguments for a tool call after another block began.",
                code="upstream_interleaved_tool_calls",
            )
        if not isinstance(name, str) or not name:
            raise UpstreamError(
                "The upstream began a tool call without a function name.",
                code="upstream_tool_call_without_name",
            )
        block = {"type": "tool_use", "id": call_id or new_tool_id(), "name": name, "input": {}}
        self._open_block(block, events)
        self._tool_key, self._tool_id = key, call_id
        self._json_started, self._json_whitespace = False, ""
        self._tool_used = True

    def _arguments(self, fragment: str, events: list[Event]) -> None:
        if not self._json_started:
            fragment = self._json_whitespace + fragment
            if not fragment.strip():
                self._json_whitespace = fragment
                return
            self._json_started = True
        events.append(self._delta({"type": "input_json_delta", "partial_json": fragment}))
        self._texts.append(fragment)

    # -- blocks -----------------------------------------------------------------------------

    def _open_block(self, block: dict[str, Any], events: list[Event]) -> None:
        events += self._close_block()
        self._index += 1
        self._block = block["type"]
        events.append({"type": "content_block_start", "index": self._index, "content_block": block})

    def _close_block(self) -> list[Event]:
        if self._block is None:
            return []
        events = []
        if self._block == "thinking":
            events.append(self._delta({"type": "signature_delta", "signature": THINKING_SIGNATURE}))
        elif self._block == "tool_use":
            self._closed_tools.update(k for k in (self._tool_key, self._tool_id) if k is not None)
        events.append({"type": "content_block_stop", "index": self._index})
        self._block = None
        return events

    def _delta(self, delta: dict[str, Any]) -> Event:
        return {"type": "content_block_delta", "index": self._index, "delta": delta}
