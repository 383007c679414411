"""``POST /v1/messages``: Anthropic's Messages API, stream and not, for every public model.

The same path as chat: the endpoint base (drain, key, body limits, JSON), then the relay with
the model's routing plan; ``formats.messages`` decides per attempt whether the upstream gets
the request as it is (it speaks Messages) or translated to chat completions. Every error, from
here on, is in Anthropic's shape.

What is checked here, before any upstream is asked: ``model``, ``messages`` (a non-empty
array), ``max_tokens`` (required, as at Anthropic) and ``stream``. When no deployment the
request may reach speaks Messages, the whole request is translated once too, so whatever a
chat upstream cannot take (a ``document`` block, a server tool, ``mcp_servers``) is a 400
naming it now, not a failed attempt later.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from proxy.asgi import Scope
from proxy.endpoints.base import Endpoint
from proxy.endpoints.validate import model_name, optional, positive, required
from proxy.errors import InvalidRequest
from proxy.formats.anthropic import messages_to_chat
from proxy.formats.messages import MessagesFormat, native
from proxy.routing import Plan
from proxy.upstreams.base import Call

# The client's headers an upstream speaking Messages gets too; a request without a version
# (not from an SDK) is sent with the first one, which every such server knows (Anthropic's
# API refuses a request without any).
FORWARDED = (b"anthropic-version", b"anthropic-beta")
DEFAULT_VERSION = "2023-06-01"


class MessagesRequest(BaseModel):
    """Anthropic's Messages request; every other field is translated or forwarded."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="A public model name (GET /v1/models)")
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: str | list[dict[str, Any]] | None = None
    stream: bool | None = Field(None, description="true: Server-Sent Events, event by event")
    tools: list[dict[str, Any]] | None = None
    thinking: dict[str, Any] | None = None


class Messages(Endpoint):
    """The Messages endpoint: validate, then the relay does the rest."""

    path = "/v1/messages"
    summary = "Create a message (Anthropic's Messages API; stream: Server-Sent Events)"
    schema = MessagesRequest
    format = MessagesFormat

    def parse(self, body: dict[str, Any], request_id: str) -> Call:
        validate_messages(body)
        max_tokens = positive(body, "max_tokens")
        if max_tokens is None:
            raise InvalidRequest(
                "Missing required parameter: 'max_tokens'.",
                param="max_tokens",
                code="missing_required_parameter",
            )
        return Call(
            api="messages",
            body=body,
            model=body["model"],
            stream=bool(optional(body, "stream", bool)),
            request_id=request_id,
            max_tokens=max_tokens,
        )

    def prepare(self, call: Call, plan: Plan, scope: Scope) -> None:
        call.headers = anthropic_headers(scope)
        if not reaches_native(plan):
            messages_to_chat(call.body)  # raises InvalidRequest for what chat cannot take


def validate_messages(body: dict[str, Any]) -> None:
    """``model`` and a non-empty ``messages`` array (``/v1/messages/count_tokens`` too)."""
    model_name(body)
    if not required(body, "messages", list):
        raise InvalidRequest(
            "Invalid value for 'messages': it must contain at least one message.",
            param="messages",
            code="invalid_value",
        )


def anthropic_headers(scope: Scope) -> dict[str, str]:
    """The client's ``anthropic-*`` headers to forward (several betas joined by commas)."""
    values: dict[str, list[str]] = {}
    for name, value in scope["headers"]:
        if name in FORWARDED:
            values.setdefault(name.decode(), []).append(value.decode("latin-1"))
    headers = {name: ",".join(parts) for name, parts in values.items()}
    headers.setdefault("anthropic-version", DEFAULT_VERSION)
    return headers


def reaches_native(plan: Plan) -> bool:
    """May any attempt of ``plan`` go to an upstream that speaks Messages itself?"""
    models = (*plan.chain, *plan.context_chain)
    return any(native(deployment.route) for model in models for deployment in model.deployments)
