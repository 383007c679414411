"""OpenAI-compatible HTTP upstreams (OpenAI, DashScope, vLLM, llama.cpp, Ollama...) over the
app's one shared wire (``upstreams.http``, ``upstreams.wire``).

The client's own headers are never forwarded: the request to the upstream is built from
scratch (so hop-by-hop headers and the client's ``Authorization`` stay behind), with the
upstream's key injected, the request id passed on, and only the headers an endpoint put in
``Call.headers`` (Anthropic's ``anthropic-version``/``anthropic-beta``, for a native call).
The body is the client's, unknown fields included, with the upstream's model name, and
``stream: true`` whenever the client streams or the route is ``force_stream``. A vendor whose
server needs more than that subclasses ``OpenAICompatible`` and overrides ``adapt``
(``upstreams.qwen``). Uploads and file requests (``Call.transfer``: not one JSON body) are
sent by ``upstreams.forward``.

Timeouts: ``connect``; ``first_byte`` until the response headers; ``idle`` for each wait on
the body; all enforced by ``HTTPClient``.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import InvalidRequest, UpstreamMalformed, UpstreamStreamError
from proxy.jsondepth import SHORT, TOO_DEEP, writable
from proxy.secrets import Scrubber
from proxy.settings import HTTPUpstream
from proxy.sse import Event
from proxy.upstreams import failures
from proxy.upstreams.base import Call, Reply, Route
from proxy.upstreams.forward import forward
from proxy.upstreams.http import DONE, HTTPClient
from proxy.upstreams.responses_events import responses_event
from proxy.upstreams.wire import Wire, WireResponse

# Where each API lives under an OpenAI-compatible base URL.
PATHS = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
    "responses": "/responses",
    "messages": "/messages",  # Anthropic's Messages API (vLLM, llama.cpp, Ollama serve it too)
    "messages.count_tokens": "/messages/count_tokens",  # wherever "messages" is served
    "audio": "/audio",  # + /transcriptions, /translations (multipart: upstreams.forward)
    "files": "/files",  # + /{id}, /{id}/content
}
# The APIs that stream (``force_stream`` applies to them), and those of them whose stream is
# chat-shaped (``stream_options.include_usage`` asks for its usage; Responses always sends it).
STREAMING = frozenset({"chat", "completions", "responses", "messages"})
USAGE_OPTION = frozenset({"chat", "completions"})


class OpenAICompatible:
    """An ``Upstream`` speaking OpenAI's APIs over HTTP (``apis`` in the config: which)."""

    def __init__(self, name: str, config: HTTPUpstream, wire: Wire, scrubber: Scrubber) -> None:
        self.name = name
        self.http = HTTPClient(name, config, wire, scrubber)
        self.apis: frozenset[str] = frozenset(
            api for api in PATHS if api.partition(".")[0] in config.apis
        )
        self.urls: dict[str, str] = {api: self.http.url(PATHS[api]) for api in self.apis}
        self.thinking = config.thinking  # its reasoning switch, for translated Messages calls

    async def open(self, call: Call, route: Route) -> Reply:
        url = self.urls.get(call.api)
        if url is None:
            raise InvalidRequest(f"The upstream '{self.name}' does not serve the {call.api} API.")
        if call.transfer is not None:  # an upload or a file request: not one JSON body
            return await forward(self.http, url, call, route, self._parse)
        body = encode_body(self.adapt(self.body(call, route)))
        response = await self.http.post(url, body, request_id=call.request_id, headers=call.headers)
        try:
            return await self._reply(response, call.api)
        except BaseException:
            await response.aclose()
            raise

    def body(self, call: Call, route: Route) -> dict[str, Any]:
        body = dict(call.body)
        body["model"] = route.upstream_model
        if route.force_stream and not call.stream and call.api in STREAMING:
            body["stream"] = True  # aggregated for the client; ask for usage to report it
            if call.api in USAGE_OPTION:
                options = body.get("stream_options") or {}
                body["stream_options"] = {**options, "include_usage": True}
        return body

    def adapt(self, body: dict[str, Any]) -> dict[str, Any]:
        """A vendor's changes to the request body (none for OpenAI itself)."""
        return body

    async def _reply(self, response: WireResponse, api: str) -> Reply:
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "text/event-stream":
            parse = self._parse_responses if api == "responses" else self._parse
            return Reply(chunks=self.http.events(response, parse), closers=[response.aclose])
        with self.http.errors("idle"):
            if kind == "application/json" or kind.endswith("+json"):
                payload = self.http.json(await self.http.read(response))
                await response.aclose()
                error = failures.payload_error(payload)
                if error is not None:
                    raise error
                return Reply(completion=payload)
            raise UpstreamMalformed(
                f"The upstream '{self.name}' answered with Content-Type '{kind or 'none'}', "
                "expected text/event-stream or application/json."
            )

    def _parse(self, event: Event) -> Any:
        """One SSE event -> a chunk dict, ``None`` (skip) or ``DONE``. Raises on errors."""
        data = event.data.strip()
        if not data:
            return None  # "data:" with nothing: dropped, it would crash clients
        if data == b"[DONE]":
            return DONE
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            if event.event == "error":  # llama.cpp's legacy "error: <text>"
                raise UpstreamStreamError(data.decode("utf-8", "replace")) from exc
            raise UpstreamMalformed(
                f"The upstream '{self.name}' sent malformed JSON in the stream."
            ) from exc
        # Both checks first tell ordinary chunks by a glance, in line: they run on each one.
        if len(data) > SHORT and not writable(data, payload):  # see ``proxy.jsondepth``
            raise UpstreamMalformed(f"The upstream '{self.name}' sent an event {TOO_DEEP}.")
        if (
            type(payload) is dict
            and "error" not in payload
            and event.event != "error"
            and payload.get("object") != "error"
        ):
            return payload  # a chunk, not one of the error shapes (``failures.payload_error``)
        if event.event == "error" and isinstance(payload, dict) and "error" not in payload:
            payload = {"error": payload}  # llama.cpp's legacy "error:" field, "event: error"
        error = failures.payload_error(payload)
        if error is not None:
            raise error
        if not isinstance(payload, dict):
            raise UpstreamMalformed(
                f"The upstream '{self.name}' sent a chunk that is not a JSON object."
            )
        return payload

    def _parse_responses(self, event: Event) -> Any:
        """A Responses event -> its payload (errors are items too: ``formats.responses``)."""
        return responses_event(event, self.name, self.http.scrubber)

    async def aclose(self) -> None:
        return None  # the shared wire belongs to the app's lifespan


def encode_body(body: dict[str, Any]) -> bytes:
    """The upstream request's JSON; a client body nested deeper than orjson writes is a 400."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(
            f"The request body cannot be forwarded: {exc} (nested too deeply?).",
            code="invalid_value",
        ) from exc
