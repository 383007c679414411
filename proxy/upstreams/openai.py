"""OpenAI-compatible HTTP upstreams (OpenAI, DashScope, vLLM, llama.cpp, Ollama, Qwen's
``openai_api.py``...) over the app's one shared ``httpx.AsyncClient``.

The client's own headers are never forwarded: the request to the upstream is built from
scratch (so hop-by-hop headers and the client's ``Authorization`` stay behind), with the
upstream's key injected here and the request id passed on. The body is the client's, unknown
fields included, with the upstream's model name, and ``stream: true`` whenever the client
streams or the route is ``force_stream``.

Timeouts: ``connect``; ``first_byte`` until the response headers; ``idle`` for each read of
the body. httpx has one read timeout per request, read by httpcore when the body iteration
starts, so once the headers are in we set the request's read timeout to ``idle`` before the
first body read (test ``test_idle_timeout_differs_from_first_byte`` pins this down).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson

from proxy.chunks import Chunk
from proxy.errors import ProxyError, UpstreamError, UpstreamStatusError, UpstreamTimeout
from proxy.redact import redact
from proxy.settings import HTTPUpstream
from proxy.sse import Event, SSEDecoder
from proxy.upstreams.base import ChatRequest, Reply, Route

MAX_ERROR_BODY = 64 * 1024  # bytes of an upstream error body worth reading
Send = Callable[[httpx.Request], Awaitable[httpx.Response]]


class OpenAICompatible:
    """An ``Upstream`` speaking OpenAI's chat completions API over HTTP."""

    def __init__(self, name: str, config: HTTPUpstream, send: Send) -> None:
        self.name = name
        self.send = send  # the shared client's, see proxy.app
        self.url = httpx.URL(config.base_url.rstrip("/") + "/chat/completions")  # parsed once
        self.key = config.resolve_key()
        self.timeouts = config.timeouts
        self.qwen = config.type == "qwen"
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream, application/json",
            "accept-encoding": "identity",  # compression would hold events back
            **config.headers,
        }
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def open(self, request: ChatRequest, route: Route) -> Reply:
        body = self._body(request, route)
        timeout = {
            "connect": self.timeouts.connect,
            "read": self.timeouts.first_byte,
            "write": self.timeouts.write,
            "pool": self.timeouts.connect,
        }
        headers = self.headers
        if request.request_id:
            headers = [*headers, (b"x-request-id", request.request_id.encode())]
        outgoing = httpx.Request(
            "POST",
            self.url,
            headers=headers,
            content=orjson.dumps(body),
            extensions={"timeout": timeout},
        )
        with self._errors("first_byte"):
            response = await self.send(outgoing)
        outgoing.extensions["timeout"]["read"] = self.timeouts.idle  # see the module docstring
        try:
            return await self._reply(response)
        except BaseException:
            await response.aclose()
            raise

    def _body(self, request: ChatRequest, route: Route) -> dict[str, Any]:
        body = dict(request.body)
        body["model"] = route.upstream_model
        if route.force_stream and not request.stream:
            body["stream"] = True  # aggregated for the client; ask for usage to report it
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        if self.qwen:
            _adapt_for_qwen(body)
        return body

    async def _reply(self, response: httpx.Response) -> Reply:
        if response.status_code >= 400:
            raise await self._status_error(response)
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "text/event-stream":
            return Reply(chunks=self._chunks(response), closers=[response.aclose])
        if kind == "application/json" or kind.endswith("+json"):
            with self._errors("idle"):
                raw = await response.aread()
            await response.aclose()
            try:
                return Reply(completion=orjson.loads(raw))
            except orjson.JSONDecodeError:
                raise UpstreamError(
                    f"The upstream '{self.name}' answered invalid JSON.", code="upstream_malformed"
                ) from None
        raise UpstreamError(
            f"The upstream '{self.name}' answered with Content-Type '{kind or 'none'}', "
            "expected text/event-stream or application/json.",
            code="upstream_malformed",
        )

    async def _chunks(self, response: httpx.Response) -> AsyncGenerator[Chunk, None]:
        decoder = SSEDecoder()
        reads = response.aiter_bytes()
        with self._errors("idle"):
            while True:
                raw = await anext(reads, None)  # None: the body ended, flush what is left
                for event in decoder.feed(raw) if raw is not None else decoder.flush():
                    chunk = self._parse(event)
                    if chunk is _DONE:
                        return
                    if chunk is not None:
                        yield chunk
                if raw is None:
                    return

    def _parse(self, event: Event) -> Any:
        data = event.data.strip()
        if not data:
            return None  # "data:" with nothing: dropped, it would crash clients
        if data == b"[DONE]":
            return _DONE
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            if event.event == "error":
                raise UpstreamError(redact(data.decode("utf-8", "replace"), [self.key])) from None
            raise UpstreamError(
                f"The upstream '{self.name}' sent malformed JSON in the stream.",
                code="upstream_malformed",
            ) from None
        if event.event == "error" and isinstance(payload, dict) and "error" not in payload:
            payload = {"error": payload}  # llama.cpp's legacy "error:" field, "event: error"
        return payload

    async def _status_error(self, response: httpx.Response) -> ProxyError:
        raw = b""
        with self._errors("idle"):
            async for part in response.aiter_bytes():
                raw += part
                if len(raw) >= MAX_ERROR_BODY:
                    break
        error = UpstreamStatusError(
            redact(_error_message(raw, response), [self.key]),
            status=response.status_code,
            code=None,
        )
        details = _error_object(raw)
        if details:
            error.type = str(details.get("type") or error.type)
            error.code = _optional_str(details.get("code"))
            error.param = _optional_str(details.get("param"))
        retry_after = response.headers.get("retry-after")
        if retry_after and response.status_code in (429, 503):
            error.headers["retry-after"] = retry_after
        return error

    @contextmanager
    def _errors(self, phase: str) -> Iterator[None]:
        """Translate httpx's exceptions into the proxy's, at this one boundary."""
        try:
            yield
        except httpx.ReadTimeout:
            if phase == "first_byte":
                raise UpstreamTimeout(
                    f"The upstream '{self.name}' sent no response within "
                    f"{self.timeouts.first_byte:g} s."
                ) from None
            raise UpstreamTimeout(
                f"The upstream '{self.name}' was silent for more than {self.timeouts.idle:g} s.",
                code="upstream_idle_timeout",
            ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise UpstreamError(
                f"The upstream '{self.name}' could not be reached: {_reason(exc)}.",
                code="upstream_unreachable",
            ) from None
        except httpx.PoolTimeout:
            raise UpstreamError(
                f"No connection to the upstream '{self.name}' was free in time.",
                code="upstream_pool_exhausted",
            ) from None
        except httpx.HTTPError as exc:  # reset, incomplete body, garbage instead of HTTP
            raise UpstreamError(
                f"The connection to the upstream '{self.name}' failed: {_reason(exc)}.",
                code="upstream_connection_error",
            ) from None

    async def aclose(self) -> None:
        return None  # the shared client belongs to the app's lifespan


_DONE = object()


def _adapt_for_qwen(body: dict[str, Any]) -> None:
    """Qwen's ``openai_api.py`` rejects with 422 what OpenAI accepts: list content parts and a
    bare string ``stop``. Send what it understands instead."""
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            message["content"] = "".join(
                part.get("text", "") for part in content if isinstance(part, dict)
            )
    if isinstance(body.get("stop"), str):
        body["stop"] = [body["stop"]]


def _error_object(raw: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict):
        if isinstance(data.get("error"), dict):
            return data["error"]  # type: ignore[no-any-return]
        if data.get("object") == "error":  # vLLM's legacy shape
            return data
    return None


def _error_message(raw: bytes, response: httpx.Response) -> str:
    """The upstream's own words, from whichever error shape it uses."""
    details = _error_object(raw)
    if details and details.get("message"):
        return str(details["message"])
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        if isinstance(data.get("error"), str):
            return str(data["error"])
        detail = data.get("detail")  # FastAPI, e.g. Qwen's openai_api.py
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):
            return "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}"
                for d in detail
                if isinstance(d, dict)
            )
    text = raw.decode("utf-8", "replace").strip()
    if text and not text.lstrip().startswith("<") and len(text) <= 500:
        return text
    return f"The upstream answered {response.status_code} {response.reason_phrase}."


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _reason(exc: Exception) -> str:
    if str(exc):
        return str(exc).rstrip(".")
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return "the connection was reset"  # httpx gives these no text of their own
    return type(exc).__name__
