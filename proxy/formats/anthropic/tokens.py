"""``count_tokens``: an estimate of a Messages request's input tokens, without a tokenizer.

The rule is ``proxy.formats.chunks.estimate_tokens`` (about one token per CJK character, four
characters per token of other text), the one the chat side uses for estimated usage, applied
to what the model reads: ``system``, every block's text, thinking, tool names and inputs,
tool results, and the tool definitions. An image has no text to count: Anthropic bills about
1600 tokens for a ~1.15 megapixel one, so each counts that much.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from proxy.formats.anthropic.errors import missing
from proxy.formats.chunks import estimate_tokens

IMAGE_TOKENS = 1600
# The role markers and separators a chat template puts around one message or tool.
OVERHEAD_TOKENS = 4


def count_tokens(body: dict[str, Any]) -> int:
    """The estimated input tokens of an Anthropic request body (``messages`` required)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise missing("messages")
    total = _content_tokens(body.get("system"))
    for message in messages:
        total += OVERHEAD_TOKENS
        if isinstance(message, dict):
            total += _content_tokens(message.get("content"))
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        total += OVERHEAD_TOKENS + estimate_tokens(orjson.dumps(tool).decode())
    return total


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return estimate_tokens(content)
    if not isinstance(content, list):
        return 0
    return sum(_block_tokens(block) for block in content if isinstance(block, dict))


def _block_tokens(block: dict[str, Any]) -> int:
    kind = block.get("type")
    if kind == "image":
        return IMAGE_TOKENS
    if kind == "tool_result":
        return _content_tokens(block.get("content"))
    return sum(estimate_tokens(text) for text in _block_texts(block))


def _block_texts(block: dict[str, Any]) -> Iterator[str]:
    """The texts of a block a model reads: its text, thinking, tool name and input."""
    for key in ("text", "thinking", "name"):
        if isinstance(block.get(key), str):
            yield block[key]
    if "input" in block:
        yield orjson.dumps(block["input"]).decode()
