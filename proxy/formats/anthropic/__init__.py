"""Anthropic's Messages API in front of chat completions upstreams: pure translation.

The endpoint (``POST /v1/messages``) owns HTTP, routing, SSE framing and keepalives; this
package turns requests and errors from one shape into the other:

* ``messages_to_chat(body, thinking=...)``: an Anthropic request -> a chat request body
  (``request``, ``content``). Bad input raises ``proxy.errors.InvalidRequest``.
* ``error_body``: a ``ProxyError`` -> ``{"type": "error", "error": {"type", "message"}}``
  (``errors``).
* ``count_tokens``: an input-token estimate for ``/v1/messages/count_tokens`` (``tokens``).

Every decision is documented in the module that makes it and checked in
``tests/test_anthropic_format.py``.
"""

from proxy.formats.anthropic.errors import error_body, error_type
from proxy.formats.anthropic.request import THINKING_STYLES, messages_to_chat
from proxy.formats.anthropic.tokens import count_tokens

__all__ = [
    "THINKING_STYLES",
    "count_tokens",
    "error_body",
    "error_type",
    "messages_to_chat",
]
