"""What the OpenAI APIs share as ``relay.Format``s: the keepalive ping (an SSE comment) and
errors in OpenAI's shape, as the HTTP body and as a stream's last ``data:`` event."""

from __future__ import annotations

from proxy.errors import ProxyError
from proxy.sse import PING, encode_event


class OpenAIShape:
    """A base for the formats of OpenAI's APIs (chat, completions, embeddings, uploads,
    Responses); each adds its ``exchange``."""

    ping = PING

    @staticmethod
    def error_body(error: ProxyError) -> bytes:
        return error.to_json()  # HTTP errors have the same shape in every OpenAI API

    @staticmethod
    def error_event(error: ProxyError) -> bytes:
        return encode_event(error.to_dict())
