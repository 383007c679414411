"""A stream's body goes to the send the app was called with, past the app's own middleware,
once its start has gone through them (``proxy.asgi.body_sender``): what clients receive is the
same, whatever wraps the app still sees every message, and every middleware inside the app is
one that only looks at the start."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.routing import Router

from proxy.app import START_ONLY, create_app
from proxy.asgi import Message, Receive, Scope, Send
from tests.helpers import echo_settings, run_server

BODY = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "a b c d e"}]}


class Counting:
    """An outer middleware counting the body messages that pass through it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted(message: Message) -> None:
            if message["type"] == "http.response.body":
                self.bodies += 1
            await send(message)

        await self.app(scope, receive, counted)


def stream(url: str) -> bytes:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=BODY, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["x-request-id"]  # the start went through the AccessLog
        return b"".join(response.iter_raw())


def counted_app() -> tuple[Counting, list[Counting]]:
    """The echo app wrapped in a Counting (outer), and with one as its innermost middleware
    (built when the app first serves: the list holds it then)."""
    app = create_app(echo_settings())
    inner: list[Counting] = []

    def counting(wrapped: Any) -> Counting:
        inner.append(Counting(wrapped))
        return inner[0]

    app.add_middleware(counting)  # type: ignore[arg-type]
    return Counting(app), inner


def test_stream_body_skips_the_apps_middleware_not_what_wraps_the_app() -> None:
    outer, inner = counted_app()
    with run_server(outer) as url:  # type: ignore[arg-type]
        received = stream(url)
    events = received.count(b"data: ")
    assert events >= 7 and received.endswith(b"data: [DONE]\n\n")
    assert inner[0].bodies == 1  # in the app: the last message only, every chunk went past
    assert outer.bodies >= events  # around the app (a buffering layer, say): every message


# FastAPI's and Starlette's own layers, each read: none of them touches a body message (the
# error ones and the body limit note whether the start went out; the others pass send as is).
FRAMEWORK_OWN = {
    "starlette.middleware.errors.ServerErrorMiddleware",
    "starlette.middleware.exceptions.ExceptionMiddleware",
    "fastapi.middleware.asyncexitstack.AsyncExitStackMiddleware",
    "fastapi.telemetry._asgi.ExceptionTelemetryMiddleware",
    "fastapi._body_limit.AppBodyLimitMiddleware",
}


def test_every_middleware_looks_only_at_the_start() -> None:
    app = create_app(echo_settings(root_path="/p", cors_origins=["http://x"]))
    layer: Any = app.build_middleware_stack()
    seen = []
    while not isinstance(layer, Router):
        seen.append(type(layer))
        layer = layer.app
    unknown = [
        kind
        for kind in seen
        if kind not in START_ONLY and f"{kind.__module__}.{kind.__qualname__}" not in FRAMEWORK_OWN
    ]
    assert not unknown, f"middleware that may change bodies (see proxy.app.START_ONLY): {unknown}"
    assert set(seen) >= START_ONLY  # all four are in this stack: the walk reached them


def test_a_downloaded_files_body_skips_the_apps_middleware_too() -> None:
    outer, inner = counted_app()
    content = bytes(range(256)) * 4096  # 1 MiB: passed on in several pieces
    with run_server(outer) as url:  # type: ignore[arg-type]
        uploaded = httpx.post(
            f"{url}/v1/files",
            files={"file": ("data.jsonl", content)},
            data={"purpose": "batch"},
            timeout=10,
        )
        assert uploaded.status_code == 200, uploaded.text
        file_id = uploaded.json()["id"]
        inner[0].bodies = outer.bodies = 0
        downloaded = httpx.get(f"{url}/v1/files/{file_id}/content", timeout=10)
    assert downloaded.status_code == 200 and downloaded.content == content
    assert outer.bodies >= 3  # several pieces, each seen around the app
    assert inner[0].bodies == 1  # inside it: only the last message
