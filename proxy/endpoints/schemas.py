"""The request bodies as ``/openapi.json`` documents them.

Documentation only: the endpoints validate by hand (``endpoints.validate``) so that each error
names its param the way OpenAI does, and forward unknown fields untouched (``extra="allow"``
here says so).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: Literal["system", "user", "assistant", "tool", "function", "developer"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatCompletionRequest(_Open):
    """OpenAI's chat completions request; every other field is forwarded as sent."""

    model: str = Field(description="A public model name (GET /v1/models)")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = Field(None, description="true: Server-Sent Events, chunk by chunk")
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class ResponsesRequest(_Open):
    """OpenAI's Responses request; every other field is forwarded (native upstreams) or
    translated (chat completions upstreams: README "POST /v1/responses")."""

    model: str = Field(description="A public model name (GET /v1/models)")
    input: str | list[dict[str, Any]] | None = Field(
        None, description="A string (one user message) or an array of input items"
    )
    instructions: str | None = None
    stream: bool | None = Field(None, description="true: Server-Sent Events, event by event")
    max_output_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    previous_response_id: str | None = Field(
        None, description="Only for models whose upstream speaks Responses natively"
    )


class CompletionRequest(_Open):
    """OpenAI's legacy text completions request; every other field is forwarded as sent."""

    model: str = Field(description="A public model name (GET /v1/models)")
    prompt: str | list[str] | list[int] | list[list[int]]
    stream: bool | None = Field(None, description="true: Server-Sent Events, chunk by chunk")
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)


class EmbeddingRequest(_Open):
    """OpenAI's embeddings request; every other field is forwarded as sent."""

    model: str = Field(description="A public model name (GET /v1/models)")
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
