"""Chat completions answer -> Anthropic ``message``: the non-stream answer, and the pieces the
stream shares with it (stop reasons, usage, ids, the thinking signature).

Decisions, each checked against anthropic-sdk-python:

* ``stop_reason``: ``length`` -> ``max_tokens``; ``content_filter`` -> ``refusal``;
  ``tool_calls`` (and ``stop`` when the answer did call tools, as Qwen and Ollama report it)
  -> ``tool_use``, because agents run tools only on ``tool_use``; ``stop`` -> ``stop_sequence``
  when vLLM's ``stop_reason`` names one of the request's ``stop_sequences`` (OpenAI does not
  say which stop matched, so there it is ``end_turn``); anything else -> ``end_turn``.
* ``usage``: Anthropic's ``input_tokens`` excludes cache reads while chat's
  ``prompt_tokens`` includes ``prompt_tokens_details.cached_tokens``, so the cached part is
  moved to ``cache_read_input_tokens``. Chat's ``completion_tokens`` counts reasoning, as
  Anthropic's ``output_tokens`` counts thinking.
* A thinking block carries ``THINKING_SIGNATURE``: the SDK's ``ThinkingBlock.signature`` is a
  required ``str`` and clients must send it back with the block (Anthropic answers
  "thinking.signature: Field required" otherwise). It proves nothing; this translation drops
  thinking blocks from the history anyway, and a pass-through upstream can recognise and drop
  it by this constant.
* Tool ``arguments`` that are not a JSON object (a model's broken JSON) become
  ``{"_raw": "<arguments>"}``: ``input`` must be an object, and an agent that validates it
  answers the model with a validation error it can recover from, where a 502 would end the
  turn. The text is kept, not guessed at.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Sequence
from typing import Any

import orjson

from proxy.formats.chunks import estimate_tokens
from proxy.jsondepth import writable

Body = dict[str, Any]

THINKING_SIGNATURE = "chat-stream-proxy:unsigned"
_BASE62 = string.digits + string.ascii_letters
_STOP_REASONS = {
    "length": "max_tokens",
    "content_filter": "refusal",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
}


def new_message_id() -> str:
    """``msg_`` and 24 random base62 characters, the shape of Anthropic's ids."""
    return "msg_" + _random_base62(24)


def new_tool_id() -> str:
    """A ``toolu_`` id for a tool call whose upstream gave none."""
    return "toolu_" + _random_base62(24)


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(length))


def stop_reason(
    finish: Any, matched: Any, stop_sequences: Sequence[str], *, tool_used: bool
) -> tuple[str, str | None]:
    """``(stop_reason, stop_sequence)`` for chat's ``finish_reason`` and vLLM's ``stop_reason``."""
    reason = _STOP_REASONS.get(finish) if isinstance(finish, str) else None
    if reason is not None:
        return reason, None
    if tool_used:
        return "tool_use", None
    if isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return "end_turn", None


def message_usage(usage: Any, output_estimate: int) -> Body:
    """A complete Anthropic ``Usage`` from a chat ``usage`` (or from the estimate without one)."""
    counts = delta_usage(usage, output_estimate)
    return {
        "input_tokens": counts.get("input_tokens", 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": counts.get("cache_read_input_tokens", 0),
        "output_tokens": counts["output_tokens"],
    }


def delta_usage(usage: Any, output_estimate: int) -> Body:
    """The ``usage`` of ``message_delta``: only the counts the upstream reported (the SDK keeps
    ``message_start``'s for the others), ``output_tokens`` always."""
    if not isinstance(usage, dict):
        return {"output_tokens": output_estimate}
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    counts: Body = {}
    if isinstance(prompt, int):
        counts["input_tokens"] = prompt - cached if isinstance(cached, int) else prompt
    if isinstance(cached, int):
        counts["cache_read_input_tokens"] = cached
    counts["output_tokens"] = completion if isinstance(completion, int) else output_estimate
    return counts


def tool_input(arguments: Any) -> Body:
    """A tool call's ``arguments`` as the ``input`` object (see the module docstring)."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw": arguments}
    # Arguments nested too deep to write back (``proxy.jsondepth``) go on as the string.
    usable = isinstance(value, dict) and writable(arguments.encode(), value)
    return value if usable else {"_raw": arguments}


def message_from_completion(
    completion: Body, *, message_id: str, model: str, stop_sequences: list[str] | None = None
) -> Body:
    """A non-stream chat completion as one Anthropic ``message`` (its first choice)."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") if isinstance(choice, dict) else None
    message = message if isinstance(message, dict) else {}
    content = _content(message)
    tool_used = any(block["type"] == "tool_use" for block in content)
    reason, sequence = stop_reason(
        choice.get("finish_reason"), choice.get("stop_reason"), stop_sequences or (),
        tool_used=tool_used,
    )  # fmt: skip
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": message_usage(completion.get("usage"), _estimate(content)),
    }


def _content(message: Body) -> list[Body]:
    """Thinking, then text, then tool calls: the order a model produces them."""
    blocks: list[Body] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": THINKING_SIGNATURE})
    for text in (_text(message.get("content")), message.get("refusal")):
        if isinstance(text, str) and text:
            blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            blocks.append(_tool_use(call))
    return blocks


def _text(content: Any) -> str | None:
    """Chat content is a string, or (rarely, in answers) a list of text parts."""
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else None


def _tool_use(call: Body) -> Body:
    function = call.get("function")
    function = function if isinstance(function, dict) else {}
    return {
        "type": "tool_use",
        "id": call.get("id") or new_tool_id(),
        "name": function.get("name") or "",
        "input": tool_input(function.get("arguments")),
    }


def _estimate(content: list[Body]) -> int:
    """Output tokens of an answer whose upstream reported no usage."""
    texts = (block.get("thinking") or block.get("text") or "" for block in content)
    inputs = (orjson.dumps(block["input"]).decode() for block in content if "input" in block)
    return sum(estimate_tokens(text) for text in (*texts, *inputs))
