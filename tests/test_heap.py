"""A request leaves no reference cycle behind, however it ends: reference counting frees it all.

The serving process collects its youngest generation rarely (``proxy/heap.py``); that is only
sound if requests do not leave cycles behind for the collector. Some did:
- every request: the scope kept the server's ``send``, a method of uvicorn's request cycle,
  which holds the scope (about 20 µs of CPU a request in collections);
- every upstream failure: the raising frames held the error (and aiohttp keeps a failed
  connection's error in a local of a frame of its traceback), with the frames' callers up to
  the request's body (an outage then held hundreds of MB for the collector);
- every upload: the multipart parser and its callbacks held each other, with the last data
  read.
Here each kind of request is made over a real uvicorn socket with the collector off and
``DEBUG_SAVEALL`` on, then one collection says what only it could have freed: no object of
the proxy, the server or the HTTP libraries, and none of the request's body (each request
carries a ``PAD`` of distinct bytes, looked for in whatever the collection found).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from proxy import create_app
from proxy.app import ProxyApp
from proxy.asgi import APP_SEND
from proxy.settings import Settings
from tests.fake_upstream import Recorded, Reply, completion, serve_fake
from tests.helpers import echo_settings, eventually, free_port, run_server
from tests.test_observability import samples_of, value

KEY = "sk-heap-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITED = [
    {"name": "k", "key": KEY, "rpm": 10_000, "tpm": 10**12, "max_parallel": 8},
    {"name": "none-left", "key": "sk-heap-zero", "rpm": 0},
]
PAD = "heap-pad-" * 20_000  # 180 KB in every request's body: found if anything keeps it
MARK = b"heap-pad-heap-pad-"
OURS = (
    "proxy.",
    "uvicorn.",
    "aiohttp.",
    "aiohappyeyeballs.",
    "starlette.",
    "fastapi.",
    "httpx.",
    "httpcore.",
    "anyio.",
    "python_multipart.",
)


def left_in_cycles(make_requests: Callable[[], None]) -> list[str]:
    """What only the cyclic collector frees after ``make_requests``: the types of the proxy's,
    the server's and the HTTP libraries' objects, and ``"the body"`` if a request's body is
    among what it holds."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        make_requests()
        time.sleep(0.05)  # the server's side of the last request ends after its answer
        gc.collect()
        found = {f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage}
        found = {name for name in found if name.startswith(OURS)}
        for o in gc.garbage:  # the body, whole or in pieces, in what only the collector frees
            for held in (o, *gc.get_referents(o)):
                if isinstance(held, bytes | bytearray | memoryview | str) and len(held) > 1000:
                    text = held.encode() if isinstance(held, str) else bytes(held)
                    if MARK in text:
                        found.add("the body")
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()
    return sorted(found)


def post(
    url: str, body: Any, *, key: str = KEY, stream: bool = False, done: bool = True
) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    response = requests.post(f"{url}/v1/chat/completions", data=data, headers=headers, stream=True)
    with response:
        lines = [line for line in response.iter_lines() if line]
        if stream and response.status_code == 200:
            assert (lines[-1] == b"data: [DONE]") is done, lines[-1]
    return response


def chat(model: str, stream: bool = False, content: str = PAD) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}


async def upstream(request: Recorded, reply: Reply) -> None:
    """Answers by the upstream model asked for: ``ok``, ``fail`` (500), ``silent``, ``stall``
    or ``cut`` (one chunk, then silence or a reset). Uploads: 500."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        await reply.json(500, {"error": {"message": "boom", "type": "server_error"}})
        return
    body = request.json()
    if body["model"] == "fail":
        await reply.json(500, {"error": {"message": "boom", "type": "server_error"}})
        return
    if body["model"] == "silent":
        await reply.start()
        await reply.send(b": nothing yet\n\n")
        await reply.until_closed(5)
        return
    if not body.get("stream"):
        await reply.json(200, completion("hello", {"prompt_tokens": 3, "completion_tokens": 1}))
        return
    await reply.start()
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "x"}
    chunk["choices"] = [{"index": 0, "delta": {"content": "hello"}, "finish_reason": None}]
    await reply.send(f"data: {json.dumps(chunk)}\n\n".encode())
    if body["model"] == "stall":  # mid-stream: the idle timeout
        await reply.until_closed(5)
        return
    if body["model"] == "cut":  # mid-stream: a reset
        reply.reset()
        return
    chunk["choices"] = [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    await reply.send(f"data: {json.dumps(chunk)}\n\n".encode())
    await reply.send(b"data: [DONE]\n\n")
    await reply.end()


@contextmanager
def proxy() -> Iterator[str]:
    """The echo model, and an HTTP upstream that answers, fails or goes silent, one that
    refuses connections, failover from that one to the good one, a fallback; limited keys."""
    with serve_fake(upstream) as fake:
        dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
        settings = Settings(
            upstreams={
                "echo": {"type": "echo", "delay_ms": 0, "chunk": "word"},
                "slow": {"type": "echo", "delay_ms": 20, "chunk": "word"},
                "up": {"type": "openai", "base_url": fake.url, "timeouts": {"idle": 0.3}},
                "dead": {"type": "openai", "base_url": dead},
            },
            models={
                "echo": {"upstream": "echo"},
                "slow": {"upstream": "slow"},
                "ok": {"upstream": "up", "model": "ok"},
                "stall": {"upstream": "up", "model": "stall"},
                "cut": {"upstream": "up", "model": "cut"},
                "fail": {"upstream": "up", "model": "fail"},
                "silent": {"upstream": "up", "model": "silent"},
                "dead": {"upstream": "dead"},
                "failover": {  # the refused one first (all but certainly), then the good one
                    "deployments": [
                        {"upstream": "dead", "weight": 1e9},
                        {"upstream": "up", "model": "ok", "weight": 1e-9},
                    ],
                    "strategy": "weighted",
                },
                "fallback": {"upstream": "up", "model": "fail", "fallbacks": ["ok"]},
            },
            keys=LIMITED,
            # One retry (the failover's), and no breaker resting a deployment after its
            # failures: every request goes to the upstream and fails there as asked.
            routing={
                "retries": 1,
                "backoff_seconds": 0,
                "cooldown": {"failures": 10**6, "seconds": 1},
            },
            max_body_bytes=4 * 1024 * 1024,
        )
        with run_server(create_app(settings)) as url:
            yield url


def disconnects(url: str) -> float:
    samples = samples_of(requests.get(f"{url}/metrics").text)  # requests: no httpx in the count
    return value(samples, "proxy_client_disconnects_total", model="slow", upstream="slow")


def disconnect(url: str) -> None:
    before = disconnects(url)
    response = requests.post(
        f"{url}/v1/chat/completions",
        json=chat("slow", True, "word " * 300),
        headers=AUTH,
        stream=True,
    )
    next(response.iter_lines())
    response.close()  # gone mid-stream (300 words at 20 ms each: 6 s left)
    assert eventually(lambda: disconnects(url) > before)


def other_apis(url: str) -> None:
    assert requests.get(f"{url}/v1/models", headers=AUTH).status_code == 200
    responses = {"model": "echo", "input": PAD, "stream": True}
    assert requests.post(f"{url}/v1/responses", json=responses, headers=AUTH).status_code == 200
    messages = {"model": "echo", "max_tokens": 10, "messages": [{"role": "user", "content": PAD}]}
    assert requests.post(f"{url}/v1/messages", json=messages, headers=AUTH).status_code == 200


def upload(model: str | None, status: int) -> Callable[[str], None]:
    def request(url: str) -> None:
        response = requests.post(
            f"{url}/v1/audio/transcriptions",
            data={"model": model} if model else {},
            files={"file": ("a.txt", PAD.encode())},
            headers=AUTH,
        )
        assert response.status_code == status, response.text

    return request


def expect(status: int, body: Any, **options: Any) -> Callable[[str], None]:
    def request(url: str) -> None:
        response = post(url, body, **options)
        assert response.status_code == status, response.status_code

    return request


CASES: dict[str, Callable[[str], None]] = {
    "echo json": expect(200, chat("echo")),
    "echo stream": expect(200, chat("echo", True), stream=True),
    "upstream json": expect(200, chat("ok")),
    "upstream stream": expect(200, chat("ok", True), stream=True),
    "client disconnect": disconnect,
    "other APIs": other_apis,
    "upload": upload("echo", 200),
    "upload, upstream 500": upload("fail", 500),
    "upload without a model": upload(None, 400),
    "upstream 500": expect(500, chat("fail")),
    "upstream 500, stream": expect(500, chat("fail", True)),
    "connection refused": expect(502, chat("dead")),
    "failover": expect(200, chat("failover")),
    "fallback": expect(200, chat("fallback")),
    "idle timeout": expect(504, chat("silent")),
    "idle timeout mid-stream": expect(200, chat("stall", True), stream=True, done=False),
    "reset mid-stream": expect(200, chat("cut", True), stream=True, done=False),
    "bad JSON": expect(400, b'{"model": "echo", "pad": "' + PAD.encode()),
    "bad key": expect(401, chat("echo"), key="sk-wrong"),
    "over a limit": expect(429, chat("echo"), key="sk-heap-zero"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_request_leaves_no_cycle_however_it_ends(case: str) -> None:
    with proxy() as url:
        CASES[case](url)  # warm: pools, caches and metric series made once
        assert left_in_cycles(lambda: [CASES[case](url) for _ in range(5)]) == []


def test_the_check_sees_a_cycle_when_the_scope_keeps_the_servers_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The negative control: the first cycle this file was written for, put back, is found."""

    async def keeps_send(self: ProxyApp, scope: Any, receive: Any, send: Any) -> None:
        scope[APP_SEND] = send
        await super(ProxyApp, self).__call__(scope, receive, send)

    monkeypatch.setattr(ProxyApp, "__call__", keeps_send)
    with run_server(create_app(echo_settings())) as url:
        post(url, chat("echo"))
        found = left_in_cycles(lambda: [post(url, chat("echo")) for _ in range(3)])
    assert "uvicorn.protocols.http.httptools_impl.RequestResponseCycle" in found
    assert "proxy.observability.access.Access" in found


def test_the_check_sees_a_body_kept_in_a_cycle_of_plain_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The negative control for the body: a cycle of a list and a dict, nothing of the
    proxy's, holding the body, is found."""
    from proxy.endpoints import body as body_module

    parse_json = body_module.parse_json

    def keeps_body(raw: bytes) -> Any:
        loop: dict[str, Any] = {"raw": bytes(raw)}
        loop["self"] = [loop]
        return parse_json(raw)

    monkeypatch.setattr("proxy.endpoints.base.parse_json", keeps_body)
    with run_server(create_app(echo_settings())) as url:
        post(url, chat("echo"))
        found = left_in_cycles(lambda: [post(url, chat("echo")) for _ in range(3)])
    assert found == ["the body"]
