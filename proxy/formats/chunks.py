"""OpenAI chat chunk shapes: normalise an upstream's chunks, aggregate them, or make them.

Every upstream's chunks pass through one ``StreamNormalizer`` (quirks.md §5.6): ``id``,
``object``, ``created`` and ``model`` are filled in and kept constant (Qwen's ``openai_api.py``
sends none of ``id``/``created``), the public model name replaces the upstream's, ``reasoning``
is renamed ``reasoning_content``, the first chunk carries ``delta.role`` and empty events are
dropped. Chunks are plain dicts from orjson: no per-chunk model validation, because the hot
path must cost microseconds; but a shape the proxy cannot use (``choices`` not a list, a
choice or delta not an object, text that is not a string) raises ``UpstreamError`` rather
than a ``TypeError`` somewhere later, and usage numbers that are not non-negative integers are
ignored, never counted. (In-stream error payloads are the upstream adapter's to recognise,
``upstreams.failures``, where secrets are scrubbed.)
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from proxy.errors import UpstreamMalformed, UpstreamTruncated

Chunk = dict[str, Any]
log = logging.getLogger(__name__)
_TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")


def new_completion_id() -> str:
    return "chatcmpl-" + os.urandom(16).hex()


def malformed(what: str) -> UpstreamMalformed:
    return UpstreamMalformed(f"The upstream sent {what}.")


def valid_usage(usage: Any) -> dict[str, Any] | None:
    """``usage`` if its token counts are non-negative integers, else None (and a warning)."""
    if usage is None:
        return None
    if isinstance(usage, dict) and all(
        _count(usage.get(key)) for key in ("prompt_tokens", "completion_tokens", "total_tokens")
    ):
        return usage
    log.warning("ignoring usage from the upstream that is not non-negative integers: %.200r", usage)
    return None


def _count(value: Any) -> bool:
    """Absent, or a non-negative integer (JSON has no separate bool, Python does)."""
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


class StreamNormalizer:
    """Makes one stream's chunks exactly OpenAI-shaped. One instance per stream."""

    __slots__ = ("created", "finished", "id", "include_usage", "model", "started", "texts", "usage")

    def __init__(self, public_model: str, include_usage: bool) -> None:
        self.model = public_model
        self.include_usage = include_usage
        self.id: str | None = None
        self.created: int = 0
        self.started = False  # a chunk with choices was passed on (it carried the role)
        self.finished = False  # a finish_reason was seen: the answer is complete
        self.usage: dict[str, Any] | None = None
        # The text so far, kept only to estimate usage if the client wants it and the
        # upstream never reports it.
        self.texts: list[str] | None = [] if include_usage else None

    def normalize(self, chunk: Any) -> Chunk | None:
        """The chunk to send, or None to drop it. Raises UpstreamError on an unusable shape."""
        if not isinstance(chunk, dict):
            raise malformed("a chunk that is not a JSON object")
        if self.id is None:
            self.id = chunk.get("id") or new_completion_id()
            created = chunk.get("created")
            self.created = created if isinstance(created, int) else int(time.time())
        chunk["id"] = self.id
        chunk["object"] = "chat.completion.chunk"
        chunk["created"] = self.created
        chunk["model"] = self.model
        choices = chunk.get("choices")
        usage = chunk.get("usage")
        if usage is not None:
            usage = chunk["usage"] = valid_usage(usage)
            if usage:
                self.usage = usage
        if choices is not None and not isinstance(choices, list):
            raise malformed("a chunk whose choices are not a list")
        if not choices:
            if not usage or not self.include_usage:
                return None  # a ping-like empty event, or usage the client did not ask for
            chunk["choices"] = []
            return chunk
        for choice in choices:
            self._choice(choice)
        return chunk

    def _choice(self, choice: Any) -> None:
        if not isinstance(choice, dict):
            raise malformed("a choice that is not an object")
        delta = choice.get("delta")
        if delta is None:
            delta = choice["delta"] = {}
        elif not isinstance(delta, dict):
            raise malformed("a delta that is not an object")
        if len(delta) != 1 or type(delta.get("content")) is not str:  # not {"content": "..."}
            check_message(delta)
        if "reasoning" in delta:  # vLLM >= 0.11, Ollama, OpenRouter
            _rename_reasoning(delta)
        if not self.started:
            self.started = True
            if "role" not in delta:
                choice["delta"] = {"role": "assistant", **delta}
        if choice.get("finish_reason"):
            self.finished = True
        if self.texts is not None:
            for key in ("content", "reasoning_content"):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    self.texts.append(text)

    def check_complete(self) -> None:
        """At the end of the upstream's stream: raise unless the answer was complete."""
        if not self.finished:
            raise UpstreamTruncated("The upstream ended the stream before the answer was complete.")

    def usage_chunk(self, messages: list[Any]) -> Chunk:
        """The usage chunk for a client that asked for one when the upstream sent none:
        an estimate, marked ``"estimated": true`` (see ``estimate_usage``)."""
        return {
            "id": self.id or new_completion_id(),
            "object": "chat.completion.chunk",
            "created": self.created or int(time.time()),
            "model": self.model,
            "choices": [],
            "usage": estimate_usage(messages, self.texts or []),
        }


def estimate_tokens(text: str) -> int:
    """A rough token count without a tokenizer: a CJK character is about one token, other
    text about four characters per token (OpenAI's rule of thumb for English)."""
    wide = sum(1 for char in text if char >= "\u2e80")
    return wide + -(-(len(text) - wide) // 4)


def message_text(message: Any) -> str:
    """A message's text, whether ``content`` is a string or a list of content parts (the one
    way the proxy flattens content: the echo model, Qwen's adapter and usage estimates)."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def estimate_usage(messages: list[Any], texts: list[str]) -> dict[str, Any]:
    prompt = sum(estimate_tokens(message_text(message)) for message in messages)
    completion = estimate_tokens("".join(texts))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "estimated": True,
    }


def check_message(message: dict[str, Any]) -> None:
    """Raise unless a delta's or message's text fields are strings and its tool calls a list
    of objects (what the aggregator and every client rely on). A stream's delta of one string
    ``content``, nearly every chunk, is told by its caller and not passed in."""
    for key in _TEXT_FIELDS:
        value = message.get(key)
        if value is not None and not isinstance(value, str):
            raise malformed(f"a {key} that is not a string")
    calls = message.get("tool_calls")
    if calls is not None and (
        not isinstance(calls, list) or not all(isinstance(call, dict) for call in calls)
    ):
        raise malformed("tool_calls that are not a list of objects")


def normalize_completion(completion: Any, public_model: str) -> Chunk:
    """A non-stream answer, shaped like OpenAI's ``chat.completion``."""
    if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
        raise malformed("JSON that is not a chat completion")
    if "usage" in completion:
        completion["usage"] = valid_usage(completion["usage"])
    completion["id"] = completion.get("id") or new_completion_id()
    completion["object"] = "chat.completion"
    if not isinstance(completion.get("created"), int):
        completion["created"] = int(time.time())
    completion["model"] = public_model
    for choice in completion["choices"]:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise malformed("a choice without a message object")
        check_message(message)
        if "reasoning" in message:
            _rename_reasoning(message)
    return completion


def _rename_reasoning(obj: dict[str, Any]) -> None:
    """``reasoning`` -> ``reasoning_content`` in a delta or message (one name for clients)."""
    reasoning = obj.pop("reasoning")
    if reasoning is not None and obj.get("reasoning_content") is None:
        obj["reasoning_content"] = reasoning


class Aggregator:
    """Merges a stream's (normalised) chunks into one ``chat.completion``."""

    def __init__(self) -> None:
        self.first: Chunk | None = None
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: Chunk) -> None:
        if self.first is None:
            self.first = chunk
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            state = self.choices.setdefault(
                choice.get("index", 0),
                {"role": "assistant", "content": [], "reasoning": [], "tools": {}, "finish": None},
            )
            delta = choice.get("delta") or {}
            if delta.get("role"):
                state["role"] = delta["role"]
            if delta.get("content"):
                state["content"].append(delta["content"])
            if delta.get("reasoning_content"):
                state["reasoning"].append(delta["reasoning_content"])
            for call in delta.get("tool_calls") or ():
                _merge_tool_call(state["tools"], call)
            if choice.get("finish_reason"):
                state["finish"] = choice["finish_reason"]

    def result(self) -> Chunk:
        first = self.first or {}
        completion: Chunk = {
            "id": first.get("id") or new_completion_id(),
            "object": "chat.completion",
            "created": first.get("created") or int(time.time()),
            "model": first.get("model"),
            "choices": [self._choice(i, s) for i, s in sorted(self.choices.items())],
        }
        if first.get("system_fingerprint"):
            completion["system_fingerprint"] = first["system_fingerprint"]
        if self.usage is not None:
            completion["usage"] = self.usage
        return completion

    @staticmethod
    def _choice(index: int, state: dict[str, Any]) -> Chunk:
        tools = [state["tools"][i] for i in sorted(state["tools"])]
        content = "".join(state["content"])
        message: Chunk = {
            "role": state["role"],
            "content": content if content or not tools else None,
            "refusal": None,
        }
        if state["reasoning"]:
            message["reasoning_content"] = "".join(state["reasoning"])
        if tools:
            message["tool_calls"] = tools
        return {
            "index": index,
            "message": message,
            "logprobs": None,
            "finish_reason": state["finish"],
        }


def _merge_tool_call(tools: dict[int, Chunk], call: Any) -> None:
    if not isinstance(call, dict):
        return
    index = call.get("index", len(tools))
    merged = tools.setdefault(
        index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if call.get("id"):
        merged["id"] = call["id"]
    if call.get("type"):
        merged["type"] = call["type"]
    function = call.get("function") or {}
    if function.get("name"):
        merged["function"]["name"] += function["name"]
    if function.get("arguments"):
        merged["function"]["arguments"] += function["arguments"]


def completion_to_chunks(completion: Chunk) -> list[Chunk]:
    """The chunks a streaming client gets when the upstream answered one JSON anyway."""
    base = {key: completion.get(key) for key in ("id", "object", "created", "model")}
    base["object"] = "chat.completion.chunk"
    chunks: list[Chunk] = []
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        index = choice.get("index", 0)
        delta: Chunk = {"role": message.get("role") or "assistant", "content": ""}
        chunks.append(_chunk(base, index, delta, None))
        body = {k: v for k, v in message.items() if k != "role" and v is not None}
        if "tool_calls" in body:
            body["tool_calls"] = [{"index": i, **call} for i, call in enumerate(body["tool_calls"])]
        if body:
            chunks.append(_chunk(base, index, body, None))
        chunks.append(_chunk(base, index, {}, choice.get("finish_reason") or "stop"))
    if completion.get("usage"):
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    return chunks


def _chunk(base: Chunk, index: int, delta: Chunk, finish: str | None) -> Chunk:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {**base, "choices": [choice]}
