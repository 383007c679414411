"""``POST /v1/chat/completions`` as a pure ASGI endpoint.

Pure ASGI rather than a FastAPI route: we read the body ourselves (so the size limit holds
while reading and bad bodies get OpenAI's error shape, never FastAPI's 422), and each chunk
goes to ``send`` the moment the upstream produced it, one ASGI message per event, which
uvicorn writes as one HTTP chunk. Nothing here may batch chunks or delay a flush.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from proxy.asgi import SSE_HEADERS, Receive, Scope, Send, header, send_error, send_json
from proxy.auth import Authenticator
from proxy.chunks import (
    Aggregator,
    Chunk,
    StreamNormalizer,
    completion_to_chunks,
    normalize_completion,
)
from proxy.errors import (
    MethodNotAllowed,
    ModelNotFound,
    ProxyError,
    ServiceUnavailable,
    UpstreamError,
)
from proxy.request import parse_json, read_body, validate_chat
from proxy.shutdown import Drain
from proxy.sse import DONE, encode_event
from proxy.upstreams.base import ChatRequest, Reply, Route
from proxy.watchdog import Watchdog

log = logging.getLogger(__name__)


class ChatCompletions:
    """The chat endpoint; ``routes`` maps public model names to upstreams."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        auth: Authenticator,
        *,
        drain: Drain,
        max_body_bytes: int,
        keepalive: float,
    ) -> None:
        self.routes = routes
        self.auth = auth
        self.drain = drain
        self.max_body_bytes = max_body_bytes
        self.keepalive = keepalive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            request, route = await self._accept(scope, receive)
        except ProxyError as exc:
            await send_error(send, exc)
            return
        await self._serve(request, route, receive, send)

    async def _accept(self, scope: Scope, receive: Receive) -> tuple[ChatRequest, Route]:
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"Method {scope['method']} is not allowed; use POST.")
        self.drain.refuse_if_draining()
        self.auth.check(scope)  # before reading the body: a refused client costs nothing
        length = header(scope, b"content-length")
        body = await read_body(
            receive, self.max_body_bytes, int(length) if length and length.isdigit() else None
        )
        data = parse_json(body)
        validate_chat(data)
        route = self.routes.get(data["model"])
        if route is None:
            raise ModelNotFound(
                f"The model `{data['model']}` does not exist or you do not have access to it.",
                param="model",
            )
        options = data.get("stream_options") or {}
        max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
        request = ChatRequest(
            body=data,
            model=data["model"],
            stream=bool(data.get("stream")),
            include_usage=bool(options.get("include_usage")),
            request_id=scope.get("state", {}).get("request_id", ""),
            max_tokens=max_tokens,
        )
        return request, route

    async def _serve(
        self, request: ChatRequest, route: Route, receive: Receive, send: Send
    ) -> None:
        watchdog = Watchdog(receive, send, self.keepalive)
        watchdog.start()
        self.drain.track(watchdog)
        reply: Reply | None = None
        try:
            reply = await route.upstream.open(request, route)
            if request.stream:
                await self._stream(request, reply, send, watchdog)
            else:
                await send_json(send, 200, orjson.dumps(await self._complete(request, reply)))
        except ProxyError as exc:  # before anything was sent: an HTTP error
            log.info("request %s failed: %s %s", request.request_id, exc.status, exc.code)
            await send_error(send, exc)
        except asyncio.CancelledError:
            if watchdog.reason is None:
                raise
            _uncancel()
            if watchdog.reason == "shutdown":  # before any response: a plain 503
                await send_error(send, _SHUTTING_DOWN)
            else:
                log.info("request %s: client disconnected, upstream closed", request.request_id)
        finally:
            self.drain.untrack(watchdog)
            watchdog.stop()
            if reply is not None:
                await reply.aclose()

    async def _stream(
        self, request: ChatRequest, reply: Reply, send: Send, watchdog: Watchdog
    ) -> None:
        chunks = _chunks_of(reply, request.model)  # may still fail as an HTTP error
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        watchdog.start_keepalive()
        normalizer = StreamNormalizer(request.model, request.include_usage)
        try:
            async for chunk in chunks:
                out = normalizer.normalize(chunk)
                if out is not None:
                    event = b"data: " + orjson.dumps(out) + b"\n\n"  # sse.encode_event, inlined
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                    watchdog.wrote()
            if not normalizer.finished:
                raise UpstreamError(
                    "The upstream ended the stream before the answer was complete.",
                    code="upstream_truncated",
                )
            tail = DONE
        except ProxyError as exc:  # after the headers: an error event, and no [DONE]
            log.info("request %s: stream failed: %s", request.request_id, exc.code)
            tail = encode_event(exc.to_dict())
        except asyncio.CancelledError:
            if watchdog.reason != "shutdown":
                raise
            _uncancel()
            tail = encode_event(_SHUTTING_DOWN.to_dict())
        watchdog.stop_keepalive()
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _complete(self, request: ChatRequest, reply: Reply) -> Chunk:
        if reply.completion is not None:
            return normalize_completion(reply.completion, request.model)
        normalizer = StreamNormalizer(request.model, include_usage=True)
        aggregator = Aggregator()
        async for chunk in _chunks_of(reply, request.model):
            out = normalizer.normalize(chunk)
            if out is not None:
                aggregator.add(out)
        if not normalizer.finished:
            raise UpstreamError(
                "The upstream ended the stream before the answer was complete.",
                code="upstream_truncated",
            )
        return aggregator.result()


def _chunks_of(reply: Reply, public_model: str) -> AsyncIterator[Any]:
    """The reply as chunks, converting a one-JSON answer for a streaming client."""
    if reply.chunks is not None:
        return reply.chunks  # iterated directly: no extra generator layer per chunk
    completion = normalize_completion(reply.completion, public_model)
    return _iterate(completion_to_chunks(completion))


async def _iterate(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk


_SHUTTING_DOWN = ServiceUnavailable(
    "The proxy is shutting down and ended this stream before it was complete; retry the request."
)


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
