"""A request that ends well leaves no reference cycle: reference counting frees all of it.

The serving process collects its youngest generation rarely (``proxy/heap.py``); that is only
sound if requests do not leave cycles behind for the collector. One did: the scope kept the
server's ``send``, a method of uvicorn's request cycle, which holds the scope, so every
request's cycle, scope and access record waited for a collection (about 20 µs of CPU a
request). Here each kind of success is made over a real uvicorn socket with the collector off
and ``DEBUG_SAVEALL`` on, then one collection says what only it could have freed.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from proxy import create_app
from proxy.app import ProxyApp
from proxy.asgi import APP_SEND
from tests.fake_upstream import Recorded, Reply, completion, serve_fake
from tests.helpers import echo_settings, run_server, upstream_settings

KEY = "sk-heap-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITED = [{"name": "k", "key": KEY, "rpm": 10_000, "tpm": 10**9, "max_parallel": 8}]
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "one two three"}]}
OURS = ("proxy.", "uvicorn.", "aiohttp.", "starlette.", "fastapi.")


def left_in_cycles(make_requests: Callable[[], None]) -> list[str]:
    """The types (of the proxy, the server and the HTTP libraries) of the objects that only the
    cyclic collector frees after ``make_requests``."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        make_requests()
        gc.collect()
        found = [f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage]
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()
    return sorted({name for name in found if name.startswith(OURS)})


def chat(url: str, stream: bool, session: requests.Session, model: str = "echo") -> None:
    body = {**CHAT, "model": model, "stream": stream}
    with session.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, stream=True) as r:
        assert r.status_code == 200, r.text
        lines = [line for line in r.iter_lines() if line]
        if stream:
            assert lines[-1] == b"data: [DONE]"
        else:
            assert json.loads(lines[0])["choices"][0]["message"]["content"]


def disconnect(url: str, session: requests.Session) -> None:
    body = {**CHAT, "stream": True, "messages": [{"role": "user", "content": "word " * 300}]}
    response = session.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, stream=True)
    next(response.iter_lines())
    response.close()  # gone mid-stream


def other_apis(url: str, session: requests.Session) -> None:
    assert session.get(f"{url}/v1/models", headers=AUTH).status_code == 200
    responses = {"model": "echo", "input": "one two", "stream": True}
    assert session.post(f"{url}/v1/responses", json=responses, headers=AUTH).status_code == 200
    messages = {"model": "echo", "max_tokens": 10, "messages": [{"role": "user", "content": "a"}]}
    assert session.post(f"{url}/v1/messages", json=messages, headers=AUTH).status_code == 200


CASES: dict[str, Callable[[str, requests.Session], None]] = {
    "json": lambda url, session: chat(url, False, session),
    "stream": lambda url, session: chat(url, True, session),
    "disconnect": disconnect,
    "other APIs": other_apis,
}


@contextmanager
def echo_proxy() -> Iterator[str]:
    with run_server(create_app(echo_settings(keys=LIMITED))) as url:
        yield url


@pytest.mark.parametrize("case", list(CASES))
def test_a_request_that_ends_well_leaves_no_cycle(case: str) -> None:
    with echo_proxy() as url, requests.Session() as session:
        CASES[case](url, session)  # warm: pools, caches and metric series made once
        assert left_in_cycles(lambda: [CASES[case](url, session) for _ in range(10)]) == []


async def openai_upstream(request: Recorded, reply: Reply) -> None:
    body = request.json()
    if not body.get("stream"):
        await reply.json(200, completion("hello", {"prompt_tokens": 3, "completion_tokens": 1}))
        return
    await reply.start()
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "x",
        "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": None}],
    }
    await reply.send(f"data: {json.dumps(chunk)}\n\n".encode())
    chunk["choices"] = [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    await reply.send(f"data: {json.dumps(chunk)}\n\n".encode())
    await reply.send(b"data: [DONE]\n\n")
    await reply.end()


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_to_an_http_upstream_leaves_no_cycle(stream: bool) -> None:
    with serve_fake(openai_upstream) as fake:
        app = create_app(upstream_settings(fake.url, keys=LIMITED))
        with run_server(app) as url, requests.Session() as session:
            chat(url, stream, session, "m")
            assert (
                left_in_cycles(lambda: [chat(url, stream, session, "m") for _ in range(10)]) == []
            )


def test_the_check_sees_a_cycle_when_the_scope_keeps_the_servers_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The negative control: the cycle this file was written for, put back, is found."""

    async def keeps_send(self: ProxyApp, scope: Any, receive: Any, send: Any) -> None:
        scope[APP_SEND] = send
        await super(ProxyApp, self).__call__(scope, receive, send)

    monkeypatch.setattr(ProxyApp, "__call__", keeps_send)
    with echo_proxy() as url, requests.Session() as session:
        chat(url, False, session)
        found = left_in_cycles(lambda: [chat(url, False, session) for _ in range(3)])
    assert "uvicorn.protocols.http.httptools_impl.RequestResponseCycle" in found
    assert "proxy.observability.access.Access" in found
