"""``POST /v1/chat/completions``: OpenAI's chat completions, stream and not."""

from __future__ import annotations

from typing import Any

from proxy.endpoints.base import Endpoint
from proxy.endpoints.schemas import ChatCompletionRequest
from proxy.endpoints.validate import (
    invalid_type,
    model_name,
    optional,
    positive,
    required,
    type_name,
)
from proxy.errors import InvalidRequest
from proxy.formats.chat import ChatFormat
from proxy.upstreams.base import Call

ROLES = ("system", "user", "assistant", "tool", "function", "developer")


class ChatCompletions(Endpoint):
    """The chat endpoint: validate, then the relay does the rest."""

    path = "/v1/chat/completions"
    summary = "Create a chat completion (stream: Server-Sent Events)"
    schema = ChatCompletionRequest
    format = ChatFormat

    def parse(self, body: dict[str, Any], request_id: str) -> Call:
        validate_chat(body)
        options = body.get("stream_options") or {}
        return Call(
            api="chat",
            body=body,
            model=body["model"],
            stream=bool(body.get("stream")),
            request_id=request_id,
            include_usage=bool(options.get("include_usage")),
            max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
        )


def validate_chat(body: dict[str, Any]) -> None:
    """Check the fields the proxy itself relies on; raise InvalidRequest naming the param."""
    model_name(body)
    messages = required(body, "messages", list)
    if not messages:
        raise InvalidRequest(
            "Invalid value for 'messages': it must contain at least one message.",
            param="messages",
            code="invalid_value",
        )
    for index, message in enumerate(messages):
        _message(message, f"messages[{index}]")
    optional(body, "stream", bool)
    options = optional(body, "stream_options", dict)
    if options is not None:
        optional(options, "include_usage", bool, "stream_options.include_usage")
    positive(body, "max_tokens")
    positive(body, "max_completion_tokens")


def _message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise invalid_type(where, dict, message)
    role = required(message, "role", str, f"{where}.role")
    if role not in ROLES:
        supported = ", ".join(f"'{r}'" for r in ROLES)
        raise InvalidRequest(
            f"Invalid value for '{where}.role': '{role}'. Supported values are: {supported}.",
            param=f"{where}.role",
            code="invalid_value",
        )
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise InvalidRequest(
            f"Invalid type for '{where}.content': expected a string or an array of content "
            f"parts, but got {type_name(content)} instead.",
            param=f"{where}.content",
            code="invalid_type",
        )
    if isinstance(content, list):
        for index, part in enumerate(content):
            _content_part(part, f"{where}.content[{index}]")


def _content_part(part: Any, where: str) -> None:
    if not isinstance(part, dict):
        raise invalid_type(where, dict, part)
    kind = required(part, "type", str, f"{where}.type")
    if kind == "text":
        required(part, "text", str, f"{where}.text")
