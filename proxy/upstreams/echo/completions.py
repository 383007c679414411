"""The echo model's legacy text completions: each prompt back, piece by piece, ``delay``
apart, as for chat (``echo.chat``); one choice per prompt, in order. Token-id prompts come
back as their numbers (``[1, 2]`` -> ``"1 2"``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from proxy.formats.chunks import Chunk
from proxy.formats.completions import new_id, prompt_texts
from proxy.settings import EchoUpstream
from proxy.upstreams.base import Call, Reply, Route
from proxy.upstreams.echo.chat import split_pieces


async def completions(config: EchoUpstream, call: Call, route: Route) -> Reply:
    """A streamed text completion echoing the prompt(s)."""
    answers: list[tuple[list[str], str]] = []
    prompt_tokens = 0
    for text in prompt_texts(call.body.get("prompt")):
        pieces = split_pieces(text, config.chunk)
        prompt_tokens += len(pieces)
        if call.max_tokens is not None and len(pieces) > call.max_tokens:
            answers.append((pieces[: call.max_tokens], "length"))
        else:
            answers.append((pieces, "stop"))
    completion_tokens = sum(len(pieces) for pieces, _ in answers)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    delay = config.delay_ms / 1000
    return Reply(chunks=_chunks(route.upstream_model, answers, usage, delay))


async def _chunks(
    model: str, answers: list[tuple[list[str], str]], usage: dict[str, int], delay: float
) -> AsyncGenerator[Chunk, None]:
    head = {"id": new_id(), "object": "text_completion", "created": int(time.time())}
    head["model"] = model
    first = True
    for index, (pieces, finish) in enumerate(answers):
        for piece in pieces:
            if not first and delay:
                await asyncio.sleep(delay)
            first = False
            yield {**head, "choices": [_choice(index, piece, None)]}
        yield {**head, "choices": [_choice(index, "", finish)]}
    yield {**head, "choices": [], "usage": usage}


def _choice(index: int, text: str, finish: str | None) -> Chunk:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
