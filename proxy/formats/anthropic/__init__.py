"""Anthropic's Messages API in front of chat completions upstreams: pure translation.

The endpoint (``POST /v1/messages``) owns HTTP, routing, SSE framing and keepalives; this
package turns requests, chunks and errors from one shape into the other:

* ``messages_to_chat(body, thinking=...)``: an Anthropic request -> a chat request body
  (``request``, ``content``). Bad input raises ``proxy.errors.InvalidRequest``.
* ``MessagesStream``: chat chunks -> ``message_start`` ... ``message_stop`` events
  (``stream``); ``encode_event`` frames one as ``event: <type>\\ndata: <json>\\n\\n``.
* ``message_from_completion``: a non-stream chat completion -> one ``message``
  (``response``).
* ``error_body``: a ``ProxyError`` -> ``{"type": "error", "error": {"type", "message"}}``,
  the HTTP error body and the ``error`` event alike (``errors``).
* ``count_tokens``: an input-token estimate for ``/v1/messages/count_tokens`` (``tokens``).
* ``new_message_id``: ``msg_`` and 24 base62 characters.

Every decision is documented in the module that makes it and checked in
``tests/test_anthropic_format.py``, against Anthropic's own Python SDK.
"""

from proxy.formats.anthropic.errors import error_body, error_type
from proxy.formats.anthropic.request import THINKING_STYLES, messages_to_chat
from proxy.formats.anthropic.response import (
    THINKING_SIGNATURE,
    message_from_completion,
    new_message_id,
)
from proxy.formats.anthropic.stream import MessagesStream, encode_event, ping_event
from proxy.formats.anthropic.tokens import count_tokens

__all__ = [
    "THINKING_SIGNATURE",
    "THINKING_STYLES",
    "MessagesStream",
    "count_tokens",
    "encode_event",
    "error_body",
    "error_type",
    "message_from_completion",
    "messages_to_chat",
    "new_message_id",
    "ping_event",
]
