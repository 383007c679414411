"""A fault-injecting upstream for the routing tests: each request follows the next step of a
script, and every attempt is recorded with its time.

    faults = Faults(status(503), status(503), ok())      # fails twice, then answers
    with serve_fake(faults) as fake: ...
    faults.times()                                        # when each attempt arrived

Steps answer stream requests with SSE and non-stream requests with JSON, as an OpenAI-compatible
server does. ``flapping(until, down, up)`` switches on the clock: ``down`` before ``until``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fake_upstream import Recorded, Reply, completion

Step = Callable[[Recorded, Reply, str], Awaitable[None]]


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> bytes:
    if content is not None:
        delta["content"] = content
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": "up", "object": "chat.completion.chunk", "created": 1, "model": "x"}
    return b"data: " + json.dumps({**body, "choices": [choice]}).encode() + b"\n\n"


def usage_chunk(prompt: int = 3, completion: int = 2) -> bytes:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    return b"data: " + json.dumps({"id": "up", "choices": [], "usage": usage}).encode() + b"\n\n"


ROLE = chunk(role="assistant")
DONE = b"data: [DONE]\n\n"


def words(name: str) -> list[str]:
    return ["ok", " from", f" {name}"]


def completion_body(text: str) -> dict[str, Any]:
    return completion(text, {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})


def streaming(request: Recorded) -> bool:
    return bool(request.json().get("stream"))


def ok(delay: float = 0.0) -> Step:
    """Answers ``ok from <name>`` (three pieces ``delay`` apart when streamed), with usage."""

    async def step(request: Recorded, reply: Reply, name: str) -> None:
        if not streaming(request):
            await reply.json(200, completion_body("".join(words(name))))
            return
        await reply.start()
        await reply.send(ROLE)
        for piece in words(name):
            await reply.send(chunk(piece))
            if delay:
                await asyncio.sleep(delay)
        await reply.send(chunk(finish="stop") + usage_chunk() + DONE)
        await reply.end()

    return step


def status(
    code: int,
    *,
    retry_after: str | None = None,
    retry_after_ms: str | None = None,
    error_code: str | None = None,
    message: str | None = None,
) -> Step:
    """An error status with an OpenAI error body (and Retry-After headers if given)."""

    async def step(request: Recorded, reply: Reply, name: str) -> None:
        headers = {}
        if retry_after is not None:
            headers["retry-after"] = retry_after
        if retry_after_ms is not None:
            headers["retry-after-ms"] = retry_after_ms
        error = {
            "message": message or f"{name} says {code}",
            "type": "invalid_request_error" if code < 500 else "server_error",
            "param": None,
            "code": error_code,
        }
        await reply.json(code, {"error": error}, headers=headers)

    return step


def reset() -> Step:
    """Closes the connection (RST) before any byte of answer."""

    async def step(request: Recorded, reply: Reply, name: str) -> None:
        reply.reset()

    return step


def silent() -> Step:
    """Accepts the request and never answers."""

    async def step(request: Recorded, reply: Reply, name: str) -> None:
        await reply.until_closed(60)

    return step


def late(seconds: float) -> Step:
    """Headers and the role chunk at once, the content ``seconds`` later (or a JSON answer
    ``seconds`` later)."""

    async def step(request: Recorded, reply: Reply, name: str) -> None:
        if not streaming(request):
            if not await reply.until_closed(seconds):
                await reply.json(200, completion_body("".join(words(name))))
            return
        await reply.start()
        await reply.send(ROLE)
        if await reply.until_closed(seconds):
            return
        for piece in words(name):
            await reply.send(chunk(piece))
        await reply.send(chunk(finish="stop") + usage_chunk() + DONE)
        await reply.end()

    return step


def cut(after: int) -> Step:
    """``after`` content chunks, then a reset (a stream cut mid-answer)."""

    async def step(request: Recorded, reply: Reply, name: str) -> None:
        await reply.start()
        await reply.send(ROLE + b"".join(chunk(f"t{i} ") for i in range(after)))
        await asyncio.sleep(0.05)
        reply.reset()

    return step


def stall(after: int) -> Step:
    """``after`` content chunks, then silence until the proxy gives up."""

    async def step(request: Recorded, reply: Reply, name: str) -> None:
        await reply.start()
        await reply.send(ROLE + b"".join(chunk(f"t{i} ") for i in range(after)))
        await reply.until_closed(60)

    return step


def malformed(after: int = 0) -> Step:
    """``after`` content chunks, then an event that is not JSON."""

    async def step(request: Recorded, reply: Reply, name: str) -> None:
        if not streaming(request):
            await reply.json(200, b'{"choices": [{"message": ')
            return
        await reply.start()
        await reply.send(ROLE + b"".join(chunk(f"t{i} ") for i in range(after)))
        await reply.send(b"data: {not json\n\n")
        await reply.end()

    return step


def truncated(after: int = 0) -> Step:
    """``after`` content chunks, then the end: no finish_reason, no [DONE]."""

    async def step(request: Recorded, reply: Reply, name: str) -> None:
        await reply.start()
        await reply.send(ROLE + b"".join(chunk(f"t{i} ") for i in range(after)))
        await reply.end()

    return step


def flapping(until: float, down: Step, up: Step) -> Step:
    """``down`` before the monotonic time ``until``, ``up`` after it."""

    async def step(request: Recorded, reply: Reply, name: str) -> None:
        await (down if time.monotonic() < until else up)(request, reply, name)

    return step


@dataclass
class Faults:
    """The handler for ``serve_fake``: step n answers request n (the last step repeats)."""

    steps: list[Step]
    name: str = "up"
    attempts: list[float] = field(default_factory=list)  # monotonic times of each request

    def __init__(self, *steps: Step, name: str = "up") -> None:
        self.steps = list(steps) or [ok()]
        self.name = name
        self.attempts = []

    async def __call__(self, request: Recorded, reply: Reply) -> None:
        index = min(len(self.attempts), len(self.steps) - 1)
        self.attempts.append(time.monotonic())
        await self.steps[index](request, reply, self.name)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.attempts, self.attempts[1:], strict=False)]
