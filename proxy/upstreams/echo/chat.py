"""The echo model's chat completions: the last user message back, word by word or char by
char, ``delay`` apart. A "token" is one piece (a word with its leading whitespace, or one
character); ``usage`` counts pieces, and ``max_tokens`` truncates with ``finish_reason:
"length"``."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator

from proxy.formats.chunks import Chunk, message_text, new_completion_id
from proxy.settings import EchoUpstream
from proxy.upstreams.base import Call, Reply, Route

_WORD = re.compile(r"\s*\S+|\s+$")


def split_pieces(text: str, chunk: str) -> list[str]:
    """The pieces the echo model emits for ``text``."""
    return list(text) if chunk == "char" else _WORD.findall(text)


async def chat(config: EchoUpstream, call: Call, route: Route) -> Reply:
    """A streamed chat completion echoing the last user message."""
    messages = call.body["messages"]
    users = [m for m in messages if m.get("role") == "user"]
    pieces = split_pieces(message_text(users[-1]) if users else "", config.chunk)
    finish = "stop"
    if call.max_tokens is not None and len(pieces) > call.max_tokens:
        pieces, finish = pieces[: call.max_tokens], "length"
    prompt_tokens = sum(len(split_pieces(message_text(m), config.chunk)) for m in messages)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(pieces),
        "total_tokens": prompt_tokens + len(pieces),
    }
    delay = config.delay_ms / 1000
    return Reply(chunks=_chunks(route.upstream_model, pieces, finish, usage, delay))


async def _chunks(
    model: str, pieces: list[str], finish: str, usage: dict[str, int], delay: float
) -> AsyncGenerator[Chunk, None]:
    head = {
        "id": new_completion_id(),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: Chunk, finish_reason: str | None = None) -> Chunk:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**head, "choices": [choice]}

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for number, piece in enumerate(pieces):
        if number and delay:
            await asyncio.sleep(delay)
        yield chunk({"content": piece})
    yield chunk({}, finish)
    yield {**head, "choices": [], "usage": usage}
