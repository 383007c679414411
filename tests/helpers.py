"""Shared test helpers: settings for the echo model or a fake upstream, a real uvicorn server on
127.0.0.1:0, free ports, timing checks, a buffering wrapper (the negative control)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from proxy.asgi import ASGIApp, Message, Receive, Scope, Send
from proxy.server import ProxyHTTPProtocol
from proxy.settings import Settings

# The wire vectors the tests replay (copied from the project's shared set; see their README).
VECTORS = Path(__file__).parent / "vectors"


def echo_settings(**overrides: Any) -> Settings:
    """Settings serving only the echo model, with ``overrides`` (no file, no env)."""
    echo = overrides.pop("echo", {})
    return Settings(
        upstreams={"echo": {"type": "echo", "delay_ms": 0, "chunk": "word", **echo}},
        models={"echo": {"upstream": "echo"}},
        **overrides,
    )


def upstream_settings(
    url: str,
    *,
    key: str | None = None,
    model: str | None = None,
    up: dict[str, Any] | None = None,
    route: dict[str, Any] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings with one OpenAI-compatible upstream ``up`` at ``url`` and one public model ``m``
    routed to it (``model``: the upstream's name for it); ``up``/``route``: more of their keys."""
    upstream: dict[str, Any] = {"type": "openai", "base_url": url}
    if key is not None:
        upstream["api_key"] = key
    upstream.update(up or {})
    target: dict[str, Any] = {"upstream": "up"}
    if model is not None:
        target["model"] = model
    target.update(route or {})
    return Settings(upstreams={"up": upstream}, models={"m": target}, **overrides)


@contextmanager
def proxy_for(handler: Any, **settings: Any) -> Iterator[tuple[str, Any]]:
    """A fake upstream running ``handler`` and a proxy in front of it: (proxy URL, the fake)."""
    from proxy import create_app
    from tests.fake_upstream import serve_fake

    with (
        serve_fake(handler) as fake,
        run_server(create_app(upstream_settings(fake.url, **settings))) as url,
    ):
        yield url, fake


@contextmanager
def run_server(app: ASGIApp, **config: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn on an ephemeral port; yields the base URL."""
    with serving(app, **config) as (url, _):
        yield url


@contextmanager
def serving(app: ASGIApp, **config: Any) -> Iterator[tuple[str, uvicorn.Server]]:
    """Like ``run_server``, also yielding the uvicorn server (its loop runs the app)."""
    server = uvicorn.Server(
        # proxy_headers off as in `chat-stream-proxy serve`: the app applies trusted_proxies.
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            proxy_headers=False,
            http=ProxyHTTPProtocol,  # as `chat-stream-proxy serve` runs it
            **config,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(10)


class BufferingWrapper:
    """A deliberately pseudo-streaming hop: holds every body part back until the last one.

    The negative control for the streaming tests: what they assert must fail through it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parts: list[bytes] = []

        async def buffered(message: Message) -> None:
            if message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"".join(parts)}
            await send(message)

        await self.app(scope, receive, buffered)


def assert_true_streaming(times: list[float], started: float, delay: float) -> None:
    """``times`` are the arrival times of the content events of one stream.

    True streaming: the first arrives before 40% of the stream's duration, and the gaps follow
    the upstream's ``delay`` (their median is within [0.5, 2] x delay).
    """
    assert len(times) >= 4, f"too few events to judge: {len(times)}"
    duration = times[-1] - started
    first = times[0] - started
    assert first < 0.4 * duration, f"first event at {first:.3f}s of {duration:.3f}s: buffered"
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    median = gaps[len(gaps) // 2]
    assert 0.5 * delay <= median <= 2 * delay, f"median gap {median:.3f}s, expected ~{delay}s"


class StripHeader:
    """Removes one response header: e.g. X-Accel-Buffering, to show what nginx does without it."""

    def __init__(self, app: ASGIApp, name: bytes) -> None:
        self.app = app
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def strip(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [(k, v) for k, v in message["headers"] if k != self.name]
            await send(message)

        await self.app(scope, receive, strip)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def openai_arrivals(url: str, text: str, model: str = "echo") -> tuple[float, list[float]]:
    """Stream ``text`` back through openai-python; (start time, arrival time of each content chunk)."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    started = time.monotonic()
    times = [
        time.monotonic()
        for chunk in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], stream=True
        )
        if chunk.choices and chunk.choices[0].delta.content
    ]
    return started, times


def eventually(check: Any, timeout: float = 3.0) -> bool:
    """Poll ``check()`` until it holds (the server finishes a request just after answering)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
