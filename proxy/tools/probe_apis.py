"""The APIs ``probe`` can ask (``--api``): where each lives, what to send, and how much of the
answer one event or one JSON answer carries. The probe's clients and its judge are the same for
all of them (``tools.probe``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]


@dataclass(frozen=True)
class Api:
    name: str
    path: str  # under the base URL
    body: Callable[[str, str], Json]  # (model, prompt) -> the streaming request's body
    content: Callable[[Any], int]  # characters of the answer in one SSE data payload
    answer: Callable[[Any], int]  # characters of the answer in a whole JSON answer
    create: Callable[[Any, str, str], Any]  # (openai client, model, prompt) -> its stream


def _chat_content(payload: Any) -> int:
    if not isinstance(payload, dict):
        return 0
    size = 0
    for choice in payload.get("choices") or ():
        delta = choice.get("delta") or {} if isinstance(choice, dict) else {}
        for key in ("content", "reasoning_content", "reasoning"):
            if isinstance(delta.get(key), str):
                size += len(delta[key])
    return size


def _chat_answer(payload: Any) -> int:
    if not isinstance(payload, dict):
        return 0
    return sum(
        len((choice.get("message") or {}).get("content") or "")
        for choice in payload.get("choices") or ()
        if isinstance(choice, dict)
    )


DELTAS = ("response.output_text.delta", "response.reasoning_text.delta")


def _responses_content(payload: Any) -> int:
    if isinstance(payload, dict) and payload.get("type") in DELTAS:
        delta = payload.get("delta")
        return len(delta) if isinstance(delta, str) else 0
    return 0


def _responses_answer(payload: Any) -> int:
    if not isinstance(payload, dict):
        return 0
    return sum(
        len(part.get("text") or "")
        for item in payload.get("output") or ()
        if isinstance(item, dict)
        for part in item.get("content") or ()
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


APIS = {
    "chat": Api(
        "chat",
        "/chat/completions",
        lambda model, prompt: {
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": prompt}],
        },
        _chat_content,
        _chat_answer,
        lambda client, model, prompt: client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], stream=True
        ),
    ),
    "responses": Api(
        "responses",
        "/responses",
        lambda model, prompt: {"model": model, "stream": True, "input": prompt},
        _responses_content,
        _responses_answer,
        lambda client, model, prompt: client.responses.create(
            model=model, input=prompt, stream=True
        ),
    ),
}
DEFAULT_API = "chat"
