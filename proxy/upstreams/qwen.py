"""Qwen's ``openai_api.py`` (QwenLM/Qwen, FastAPI + sse-starlette): OpenAI-compatible, with
a stricter request model.

It rejects with 422 what OpenAI accepts: list content parts and a bare string ``stop``. The
proxy sends what it understands instead. Its answers (CRLF framing, no ``id``/``created``,
pings) are normalised like every other upstream's (``formats.chat``).
"""

from __future__ import annotations

from typing import Any

from proxy.formats.chunks import message_text
from proxy.upstreams.openai import OpenAICompatible


class Qwen(OpenAICompatible):
    """``type: qwen``."""

    def adapt(self, body: dict[str, Any]) -> dict[str, Any]:
        for message in body.get("messages") or ():
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                message["content"] = message_text(message)
        if isinstance(body.get("stop"), str):
            body["stop"] = [body["stop"]]
        return body
