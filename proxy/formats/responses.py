"""OpenAI's Responses API served by chat completions upstreams: the translation's public face.

``chat_request`` turns a Responses request into a chat one (``responses_request``);
``ResponsesStream`` turns the chat chunks into the Responses event lifecycle and
``response_from_completion`` a non-stream completion into one ``response`` object
(``responses_stream``). Pure functions and classes: the relay does the HTTP and SSE framing.
"""

from __future__ import annotations

from proxy.formats.responses_request import chat_request
from proxy.formats.responses_stream import (
    ResponsesStream,
    new_response_id,
    response_from_completion,
    responses_usage,
)

__all__ = [
    "ResponsesStream",
    "chat_request",
    "new_response_id",
    "response_from_completion",
    "responses_usage",
]
