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
    estimate_usage,
    normalize_completion,
)
from proxy.errors import (
    MethodNotAllowed,
    ModelNotFound,
    ProxyError,
    ServiceUnavailable,
    UpstreamTimeout,
)
from proxy.metrics import Access, GapCounter, Metrics, error_kind
from proxy.redact import redact
from proxy.request import parse_json, read_body, validate_chat
from proxy.shutdown import Drain
from proxy.sse import DONE, encode_event
from proxy.upstreams.base import ChatRequest, Reply, Route
from proxy.watchdog import Watchdog

body_log = logging.getLogger("proxy.bodies")


class ChatCompletions:
    """The chat endpoint; ``routes`` maps public model names to upstreams."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        auth: Authenticator,
        *,
        drain: Drain,
        metrics: Metrics | None,
        max_body_bytes: int,
        keepalive: float,
        send_timeout: float | None = None,
        body_timeout: float | None = None,
        log_bodies: bool = False,
    ) -> None:
        self.routes = routes
        self.auth = auth
        self.drain = drain
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.keepalive = keepalive
        self.send_timeout = send_timeout
        self.body_timeout = body_timeout
        self.log_bodies = log_bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        access: Access = scope["state"]["access"]  # made by the AccessLog middleware
        try:
            request, route = await self._accept(scope, receive)
        except ProxyError as exc:
            access.outcome = "rejected"
            await send_error(send, exc)
            return
        access.model, access.upstream, access.stream = (
            request.model,
            route.upstream_name,
            request.stream,
        )
        await self._serve(request, route, receive, send, access)

    async def _accept(self, scope: Scope, receive: Receive) -> tuple[ChatRequest, Route]:
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"Method {scope['method']} is not allowed; use POST.")
        self.drain.refuse_if_draining()
        self.auth.check(scope)  # before reading the body: a refused client costs nothing
        length = header(scope, b"content-length")
        body = await read_body(
            receive,
            self.max_body_bytes,
            int(length) if length and length.isdigit() else None,
            self.body_timeout,
        )
        if self.log_bodies:
            secrets = self.auth.secrets()
            text = redact(body.decode("utf-8", "replace"), secrets)
            body_log.info(
                "body", extra={"fields": {"request_id": scope["state"]["request_id"], "body": text}}
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
        self, request: ChatRequest, route: Route, receive: Receive, send: Send, access: Access
    ) -> None:
        watchdog = Watchdog(receive, send, self.keepalive, self.send_timeout, route.deadline)
        watchdog.start()
        self.drain.track(watchdog)
        reply: Reply | None = None
        try:
            reply = await route.upstream.open(request, route)
            if request.stream:
                await self._stream(request, reply, send, watchdog, access)
            else:
                completion = await self._complete(request, reply)
                _count_tokens(access, completion.get("usage"))
                await send_json(send, 200, orjson.dumps(completion))
        except ProxyError as exc:  # before anything was sent: an HTTP error
            access.outcome = _outcome(exc)
            await send_error(send, exc)
        except asyncio.CancelledError:
            if watchdog.reason is None:
                raise
            _uncancel()
            if watchdog.reason == "shutdown":  # before any response: a plain 503
                access.outcome = "shutdown"
                await send_error(send, _SHUTTING_DOWN)
            elif watchdog.reason == "deadline":
                error = _deadline(route.deadline)
                access.outcome = _outcome(error)
                await send_error(send, error)
            else:  # the client went away or stopped reading: nothing more can reach it
                access.outcome = (
                    "client_send_timeout"
                    if watchdog.reason == "send_timeout"
                    else "client_disconnect"
                )
        finally:
            self.drain.untrack(watchdog)
            watchdog.stop()
            if reply is not None:
                await reply.aclose()

    async def _stream(
        self, request: ChatRequest, reply: Reply, send: Send, watchdog: Watchdog, access: Access
    ) -> None:
        chunks = _chunks_of(reply, request.model)  # may still fail as an HTTP error
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        last = watchdog.start_keepalive()
        normalizer = StreamNormalizer(request.model, request.include_usage)
        gaps = in_flight = None
        if self.metrics is not None:
            labels = (request.model, access.upstream or "")
            gaps = GapCounter(self.metrics.child(self.metrics.chunk_gap, *labels))
            in_flight = self.metrics.child(self.metrics.in_flight, *labels)
            in_flight.inc()
        count = 0
        try:
            async for chunk in chunks:
                out = normalizer.normalize(chunk)
                if out is not None:
                    event = b"data: " + orjson.dumps(out) + b"\n\n"  # sse.encode_event, inlined
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                    now = watchdog.wrote()
                    if count and gaps is not None:
                        gaps.add(now - last)
                    last = now
                    count += 1
                    if access.ttft is None and _has_content(out):
                        access.ttft = now - access.started
            normalizer.check_complete()
            tail = DONE
            if request.include_usage and normalizer.usage is None:
                tail = encode_event(normalizer.usage_chunk(request.body["messages"])) + DONE
            _count_tokens(access, normalizer.usage)
        except ProxyError as exc:  # after the headers: an error event, and no [DONE]
            access.outcome = _outcome(exc)
            tail = encode_event(exc.to_dict())
        except asyncio.CancelledError:
            if watchdog.reason not in ("shutdown", "deadline"):
                raise
            _uncancel()
            error = _SHUTTING_DOWN if watchdog.reason == "shutdown" else _deadline(None)
            access.outcome = "shutdown" if watchdog.reason == "shutdown" else _outcome(error)
            tail = encode_event(error.to_dict())
        finally:
            access.chunks = count
            if gaps is not None and in_flight is not None:
                gaps.flush()
                in_flight.dec()
        watchdog.stop_keepalive()
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _complete(self, request: ChatRequest, reply: Reply) -> Chunk:
        completion = await self._completion(request, reply)
        if not completion.get("usage"):  # as for streams: an estimate, marked as one
            texts = [
                choice["message"]["content"]
                for choice in completion["choices"]
                if isinstance(choice.get("message"), dict)
                and isinstance(choice["message"].get("content"), str)
            ]
            completion["usage"] = estimate_usage(request.body["messages"], texts)
        return completion

    async def _completion(self, request: ChatRequest, reply: Reply) -> Chunk:
        if reply.completion is not None:
            return normalize_completion(reply.completion, request.model)
        normalizer = StreamNormalizer(request.model, include_usage=True)
        aggregator = Aggregator()
        async for chunk in _chunks_of(reply, request.model):
            out = normalizer.normalize(chunk)
            if out is not None:
                aggregator.add(out)
        normalizer.check_complete()
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


def _has_content(chunk: Chunk) -> bool:
    for choice in chunk["choices"]:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
            return True
    return False


def _outcome(error: ProxyError) -> str:
    kind = error_kind(error)
    if kind is not None:
        return f"upstream_{kind}"
    return "shutdown" if isinstance(error, ServiceUnavailable) else "error"


def _count_tokens(access: Access, usage: Any) -> None:
    """Tokens as the upstream reported them; an estimate is not a report."""
    if isinstance(usage, dict) and not usage.get("estimated"):
        access.prompt_tokens = usage.get("prompt_tokens")
        access.completion_tokens = usage.get("completion_tokens")


def _deadline(seconds: float | None) -> UpstreamTimeout:
    limit = f" ({seconds:g} s)" if seconds else ""
    return UpstreamTimeout(
        f"The upstream's answer took longer than the proxy allows{limit}.", code="upstream_deadline"
    )


_SHUTTING_DOWN = ServiceUnavailable(
    "The proxy is shutting down and ended this stream before it was complete; retry the request."
)


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
