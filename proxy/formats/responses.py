"""OpenAI's Responses API as the relay writes it (``ResponsesFormat``), and its translation
from chat completions.

Per attempt (``ResponsesFormat.exchange``): an upstream that lists ``responses`` among its
``apis`` gets the call as it is, and its events are passed through (``responses_native``);
any other gets a chat completions call and its chunks are translated into the Responses
lifecycle (``responses_translated``, built on the pure ``responses_request`` and
``responses_stream``).

Keepalive: the ``: ping`` comment, as for chat. SSE comments are ignored by openai-python's and
openai-node's decoders, and an event of our own would have to carry a ``sequence_number`` the
answer's events then could not continue without a gap.
"""

from __future__ import annotations

from proxy.errors import ProxyError
from proxy.formats.openai_shape import OpenAIShape
from proxy.formats.responses_native import NativeExchange
from proxy.formats.responses_objects import frames, new_response_id, responses_usage
from proxy.formats.responses_request import chat_request
from proxy.formats.responses_stream import ResponsesStream, response_from_completion
from proxy.formats.responses_translated import TranslatedExchange
from proxy.upstreams.base import Call, Route
from proxy.upstreams.responses_events import error_event

__all__ = [
    "ResponsesFormat",
    "ResponsesStream",
    "chat_request",
    "new_response_id",
    "response_from_completion",
    "responses_usage",
]


class ResponsesFormat(OpenAIShape):
    """The Responses API, for the relay (``relay.Format``)."""

    @staticmethod
    def exchange(call: Call, route: Route) -> NativeExchange | TranslatedExchange:
        if "responses" in route.upstream.apis:
            return NativeExchange(call)
        return TranslatedExchange(call)  # raises InvalidRequest for what chat cannot carry

    @staticmethod
    def error_event(error: ProxyError) -> bytes:
        """Every attempt failed after a ping had sent the headers: the stream's one event
        (``sequence_number`` 0: nothing but pings went before it)."""
        event = error_event(error.message, error.code, error.param)
        event["error"]["type"] = error.type
        return frames([{"type": "error", "sequence_number": 0, **event}])
