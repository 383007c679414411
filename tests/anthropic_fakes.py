"""Fakes and helpers for the ``/v1/messages`` tests: scripted chat upstreams (tool calls,
reasoning, late first tokens), a fake upstream that speaks Anthropic's Messages natively, the
SDK client, and a parser of the raw SSE frames the proxy writes."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anthropic

from tests.fake_upstream import Recorded, Reply

Body = dict[str, Any]
USER = {"role": "user", "content": "What is the weather in Paris?"}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@contextmanager
def sdk(url: str, **options: Any) -> Iterator[anthropic.Anthropic]:
    """Anthropic's own client pointed at the proxy (base URL without /v1, as Claude Code's
    ``ANTHROPIC_BASE_URL``), no retries of its own, closed afterwards."""
    options.setdefault("api_key", "x")
    client = anthropic.Anthropic(base_url=url, max_retries=0, timeout=30, **options)
    try:
        yield client
    finally:
        client.close()


# --- chat upstreams ------------------------------------------------------------------------


def chat_chunk(delta: Body | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    chunk = {"id": "up", "object": "chat.completion.chunk", "created": 1, "model": "x"}
    return b"data: " + json.dumps({**chunk, "choices": [choice], **extra}).encode() + b"\n\n"


def usage_chunk(prompt: int, completion: int) -> bytes:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    body = {
        "id": "up",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "x",
        "choices": [],
    }
    return b"data: " + json.dumps({**body, "usage": usage}).encode() + b"\n\n"


ROLE = chat_chunk({"role": "assistant", "content": ""})
DONE = b"data: [DONE]\n\n"


def tool_call_stream() -> list[bytes]:
    """A model that says a sentence, then calls get_weather, arguments in fragments."""
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    return [
        ROLE,
        chat_chunk({"content": "Let me check."}),
        chat_chunk({"tool_calls": [call]}),
        *(
            chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
            for part in ('{"ci', 'ty": "Pa', 'ris"}')
        ),
        chat_chunk(finish="tool_calls"),
        usage_chunk(31, 12),
        DONE,
    ]


def text_stream(
    *pieces: str, reasoning: tuple[str, ...] = (), usage: tuple[int, int] = (9, 4)
) -> list[bytes]:
    """Reasoning pieces (``reasoning_content``), then text pieces, then stop and usage."""
    return [
        ROLE,
        *(chat_chunk({"reasoning_content": piece}) for piece in reasoning),
        *(chat_chunk({"content": piece}) for piece in pieces),
        chat_chunk(finish="stop"),
        usage_chunk(*usage),
        DONE,
    ]


@dataclass
class ChatScript:
    """A chat upstream answering request n with script n (the last repeats): a list of SSE
    frames for stream requests, or one JSON completion body."""

    scripts: list[list[bytes] | Body]
    pause: float = 0.0  # between frames
    first_delay: float = 0.0  # before frame ``delay_at`` (1: after the role chunk)
    delay_at: int = 1
    requests: list[Recorded] = field(default_factory=list)

    async def __call__(self, request: Recorded, reply: Reply) -> None:
        script = self.scripts[min(len(self.requests), len(self.scripts) - 1)]
        self.requests.append(request)
        if isinstance(script, dict):
            await reply.json(200, script)
            return
        await reply.start()
        for index, frame in enumerate(script):
            waits = index == self.delay_at and self.first_delay
            if waits and await reply.until_closed(self.first_delay):
                return
            await reply.send(frame)
            if self.pause:
                await asyncio.sleep(self.pause)
        await reply.end()

    def bodies(self) -> list[Body]:
        return [request.json() for request in self.requests]


# --- an upstream speaking Messages itself --------------------------------------------------


def frame(event: Body) -> bytes:
    """One event as Anthropic's API frames it."""
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def native_events(text: str = "Bonjour!", model: str = "up-model") -> list[Body]:
    """The events of a short answer, as Anthropic streams one (a ping included)."""
    usage = {
        "input_tokens": 21,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 5,
        "output_tokens": 1,
    }
    message = {
        "id": "msg_up",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
            for piece in re.findall(r"\S+\s*", text)
        ),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 7},
        },
        {"type": "message_stop"},
    ]


def native_message(text: str = "Bonjour!", model: str = "up-model") -> Body:
    return {
        "id": "msg_up",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 21, "output_tokens": 7},
    }


@dataclass
class NativeScript:
    """A Messages server: ``/messages`` answers request n with script n (the last repeats):
    a list of events (streamed, ``first_delay`` before the second), raw bytes, or a JSON
    message; ``/messages/count_tokens`` answers ``count`` (an int, or a status to fail with)."""

    scripts: list[list[Body] | bytes | Body] = field(default_factory=lambda: [native_events()])
    count: int = 42
    count_status: int = 200
    first_delay: float = 0.0
    requests: list[Recorded] = field(default_factory=list)

    async def __call__(self, request: Recorded, reply: Reply) -> None:
        self.requests.append(request)
        if request.path.endswith("/count_tokens"):
            error = {"type": "error", "error": {"type": "not_found_error", "message": "no"}}
            body = {"input_tokens": self.count} if self.count_status == 200 else error
            await reply.json(self.count_status, body)
            return
        answers = [r for r in self.requests if not r.path.endswith("/count_tokens")]
        script = self.scripts[min(len(answers) - 1, len(self.scripts) - 1)]
        if isinstance(script, dict):
            await reply.json(200, script)
            return
        await reply.start()
        if isinstance(script, bytes):
            await reply.send(script)
        for index, event in enumerate(script if isinstance(script, list) else ()):
            if index == 1 and self.first_delay and await reply.until_closed(self.first_delay):
                return
            await reply.send(frame(event))
        await reply.end()


# --- the proxy's wire ----------------------------------------------------------------------

FRAME = re.compile(rb"event: ([a-z_]+)\ndata: (\{.*?\})\n\n", re.S)


def frames(wire: bytes) -> list[tuple[str, Body]]:
    """The SSE frames of a Messages stream; asserts that the wire is nothing but such frames,
    each named as its data's type."""
    found = list(FRAME.finditer(wire))
    assert b"".join(m.group(0) for m in found) == wire, wire[:500]
    out = [(m.group(1).decode(), json.loads(m.group(2))) for m in found]
    assert all(name == data["type"] for name, data in out)
    return out


def names(wire: bytes) -> list[str]:
    return [name for name, _ in frames(wire)]
