"""The Responses API's objects as the translation from chat builds them: ids, output items
and their content parts, usage, a failed response's error, and the SSE framing of events.

* ``usage.input_tokens_details.cache_write_tokens`` is included (0 unless the upstream reports
  it), because openai-python 3's ``ResponseUsage`` requires it; an estimate (an upstream that
  reported no usage) keeps its ``"estimated": true``.
* ``error.code`` of a failed response is one of the codes openai-python's ``ResponseError``
  allows (the error's own code when it is one, else ``rate_limit_exceeded`` for a 429, else
  ``server_error``).
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from proxy.errors import ProxyError

Json = dict[str, Any]

PREFIXES = {"message": "msg", "reasoning": "rs", "function_call": "fc"}
# openai-python's ResponseError.code: a failed response's code must be one of these.
RESPONSE_ERROR_CODES = frozenset(
    {
        "server_error",
        "rate_limit_exceeded",
        "invalid_prompt",
        "vector_store_timeout",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "invalid_image_mode",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
    }
)


def new_response_id() -> str:
    """A fresh id in OpenAI's shape: ``resp_`` and 48 hex digits."""
    return "resp_" + os.urandom(24).hex()


def responses_usage(usage: Json | None) -> Json | None:
    """Chat usage (``prompt_tokens``...) in Responses' shape (``input_tokens``...)."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage, "prompt_tokens")
    completion = _count(usage, "completion_tokens")
    cached = _details(usage, "prompt_tokens_details")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _count(cached, "cached_tokens"),
            "cache_write_tokens": _count(cached, "cache_write_tokens"),
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": _count(
                _details(usage, "completion_tokens_details"), "reasoning_tokens"
            )
        },
        "total_tokens": _count(usage, "total_tokens") or prompt + completion,
        **({"estimated": True} if usage.get("estimated") else {}),
    }


def frames(events: list[Json]) -> bytes:
    """Events as OpenAI frames them: ``event: <type>\\n`` then ``data: <json>\\n\\n`` each."""
    return b"".join(
        b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        for event in events
    )


class OutputItem:
    """One output item while it streams; ``index`` is its ``output_index`` once announced."""

    __slots__ = ("call_id", "id", "index", "kind", "name", "parts", "status")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.id = f"{PREFIXES[kind]}_{os.urandom(24).hex()}"
        self.index: int | None = None
        self.parts: list[str] = []
        self.status = "in_progress"
        self.name = ""
        self.call_id = ""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def to_dict(self) -> Json:
        """The item as Responses shows it; empty while in progress (the deltas fill it)."""
        text = "" if self.status == "in_progress" else self.text
        if self.kind == "function_call":
            return {
                "id": self.id,
                "type": "function_call",
                "status": self.status,
                "arguments": text,
                "call_id": self.call_id,
                "name": self.name,
            }
        content = [] if self.status == "in_progress" else [content_part(self.kind, text)]
        if self.kind == "message":
            return {
                "id": self.id,
                "type": "message",
                "status": self.status,
                "content": content,
                "role": "assistant",
            }
        return {
            "id": self.id,
            "type": "reasoning",
            "summary": [],
            "content": content,
            "status": self.status,
        }


def content_part(kind: str, text: str) -> Json:
    """A content part: ``output_text`` for a message, ``reasoning_text`` for reasoning."""
    if kind == "message":
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    return {"type": "reasoning_text", "text": text}


def responses_error(error: ProxyError) -> Json:
    """A failed response's ``error`` object for ``error``."""
    return {"code": error_code(error), "message": error.message}


def error_code(error: ProxyError) -> str:
    """A code openai-python's ``ResponseError`` accepts, as close to the error's as allowed."""
    if error.code in RESPONSE_ERROR_CODES:
        return error.code
    return "rate_limit_exceeded" if error.status == 429 else "server_error"


def _details(usage: Json, key: str) -> Json:
    details = usage.get(key)
    return details if isinstance(details, dict) else {}


def _count(obj: Json, key: str) -> int:
    """A token count, 0 when absent or not an integer (some upstreams send null)."""
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
