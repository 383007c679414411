"""Attacks from issue 12, over real sockets: hostile upstreams and raw clients.

Each class of attack that once worked against the proxy has its test here: the upstream key
placed in every field and header an upstream can send back, interim and extra HTTP responses
that once gave one client another's answer, clients leaving while the proxy connects upstream
(the pool slot leak), clients closing right after sending (the lost disconnect), head floods,
upstream shapes the normaliser cannot use, and the stale keep-alive race.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import requests

from proxy import Settings, create_app
from tests.fake_upstream import Recorded, Reply, serve_fake, sse_response
from tests.helpers import eventually, free_port, proxy_for, run_server
from tests.test_process import proxy_process

MESSAGES = [{"role": "user", "content": "hi"}]
KEYS = ["sk-live-attack0123456789abcdef", "Zq7R9xK2mP4vL8nB3cD6wY1t"]  # with and without sk-


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> bytes:
    if content is not None:
        delta["content"] = content
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + json.dumps({"id": "u", "choices": [choice]}).encode() + b"\n\n"


def answer_events(text: str) -> list[bytes]:
    return [chunk(role="assistant"), chunk(text), chunk(finish="stop"), b"data: [DONE]\n\n"]


@contextmanager
def proxy_to(handler: Any, key: str = KEYS[0], **overrides: Any) -> Iterator[tuple[str, Any]]:
    timeouts = {"connect": 2, "first_byte": 3, "idle": 3, **overrides.pop("timeouts", {})}
    up = {"timeouts": timeouts, **overrides.pop("up", {})}
    overrides.setdefault("routing", {"retries": 0})  # one attempt: the attack's own answer
    with proxy_for(handler, key=key, up=up, **overrides) as (url, fake):
        yield url, fake


def post(url: str, stream: bool, text: str = "hi", **kwargs: Any) -> requests.Response:
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": text}]}
    return requests.post(f"{url}/v1/chat/completions", json=body, timeout=30, **kwargs)


def streamed_text(response: requests.Response) -> str:
    text = ""
    for line in response.text.split("\n"):
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices") or ():
                text += choice["delta"].get("content") or ""
    return text


# --- 1. the upstream key never reaches a client ----------------------------------------------


def leak(place: str, key: str) -> Any:
    """An upstream that puts ``key`` in ``place``."""

    async def handler(request: Recorded, reply: Reply) -> None:
        error = {"message": "denied", "type": "auth_error", "param": None, "code": "bad"}
        if place in ("message", "param", "code", "type"):
            error[place] = f"x {key} y"
            await reply.json(401, {"error": error})
        elif place == "422 detail":
            await reply.json(422, {"detail": [{"loc": ["body", key], "msg": key}]})
        elif place == "retry-after":
            await reply.json(429, {"error": error}, headers={"retry-after": key})
        elif place == "plain text 500":
            await reply.start(500, {"content-type": "text/plain"}, chunked=False)
            reply.writer.write(f"upstream failed with key {key}".encode())
            reply.writer.close()
        elif place == "in-stream error":
            await sse_response(
                chunk(role="assistant"),
                b"data: "
                + json.dumps({"error": {**error, "message": key, "code": key}}).encode()
                + b"\n\n",
            )(request, reply)
        elif place == "in-stream vllm error":
            payload = {"object": "error", "message": key, "type": key, "param": key, "code": 400}
            await sse_response(
                chunk(role="assistant"), b"data: " + json.dumps(payload).encode() + b"\n\n"
            )(request, reply)
        elif place == "llama.cpp error line":
            await sse_response(chunk(role="assistant"), f"error: {key}\n\n".encode())(
                request, reply
            )
        elif place == "200 json error":
            await reply.json(200, {"error": {**error, "message": key, "param": key}})

    return handler


PLACES = [
    "message",
    "param",
    "code",
    "type",
    "422 detail",
    "retry-after",
    "plain text 500",
    "in-stream error",
    "in-stream vllm error",
    "llama.cpp error line",
    "200 json error",
]


@pytest.mark.parametrize("key", KEYS, ids=["sk-key", "bare-key"])
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_upstream_key_never_reaches_the_client(place: str, key: str, stream: bool) -> None:
    with proxy_to(leak(place, key), key=key) as (url, _):
        response = post(url, stream)
        metrics = requests.get(f"{url}/metrics", timeout=10).text
    everything = response.text + json.dumps(dict(response.headers)) + metrics
    assert key not in everything
    assert key[4:20] not in everything  # not even a part of it
    assert response.status_code >= 400 or "error" in response.text  # the failure is reported


# --- 2. one client never gets another's answer -----------------------------------------------


def interim(kind: str, written: list[str] | None = None) -> Any:
    """Answers each request with its own text, after an interim response or with an extra one;
    appends the text to ``written`` once everything it sends is sent."""

    async def handler(request: Recorded, reply: Reply) -> None:
        text = request.json()["messages"][-1]["content"]
        try:
            await answer(text, request, reply)
        finally:
            if written is not None:
                written.append(text)

    async def answer(text: str, request: Recorded, reply: Reply) -> None:
        if kind == "103":
            reply.writer.write(
                b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
            )
            await reply.writer.drain()
            await asyncio.sleep(0.05)
        elif kind == "100":
            reply.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await reply.writer.drain()
            await asyncio.sleep(0.05)  # in its own packet
        stream = bool(request.json().get("stream"))
        if kind == "extra":  # the answer, then at once a whole response nobody asked for
            await (sse_response(*answer_events(text)) if stream else _json(text))(request, reply)
            await reply.json(200, completion("INJECTED"))
            await sse_response(*answer_events("INJECTED"))(request, reply)
        elif kind == "extra-same-packet":
            reply.writer.write(raw_answer(text, stream) + raw_answer("INJECTED", not stream))
            await reply.writer.drain()
        elif kind == "extra-later":  # the answer; 20 ms later, while the connection is idle,
            reply.writer.write(raw_answer(text, stream))  # one nobody asked for
            await reply.writer.drain()
            await asyncio.sleep(0.02)
            reply.writer.write(raw_answer("INJECTED", not stream))
            await reply.writer.drain()
        elif stream:
            await sse_response(*answer_events(text))(request, reply)
        else:
            await reply.json(200, completion(text))

    return handler


def _json(text: str) -> Any:
    async def handler(request: Recorded, reply: Reply) -> None:
        await reply.json(200, completion(text))

    return handler


def raw_answer(text: str, stream: bool) -> bytes:
    """A whole HTTP response answering ``text``, as bytes (Content-Length framed)."""
    body = b"".join(answer_events(text)) if stream else json.dumps(completion(text)).encode()
    kind = b"text/event-stream" if stream else b"application/json"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (kind, len(body))
    return head + body


def completion(text: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "x",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


def answer_of(response: requests.Response, stream: bool) -> str:
    assert response.status_code == 200, response.text
    if stream:
        assert response.text.rstrip().endswith("data: [DONE]")
        return streamed_text(response)
    return str(response.json()["choices"][0]["message"]["content"])


@pytest.mark.parametrize("kind", ["103", "100", "extra", "extra-same-packet", "extra-later"])
def test_each_client_gets_its_own_answer(kind: str) -> None:
    """Stray bytes that reached the proxy before the next request is sent never become its
    answer. (Bytes that arrive only after the next request went out on that connection cannot
    be told from its answer, by any HTTP/1.1 client: so each next request waits until the
    upstream has written everything, else the test would time the fake's thread, not us.)"""
    written: list[str] = []

    def ask(text: str, stream: bool) -> str:
        got = answer_of(post(url, stream, text), stream)
        assert eventually(lambda: text in written)  # the extra response is on its way
        if kind == "extra-later":  # once the stray bytes are in the idle pool
            time.sleep(0.1)
        return got

    with proxy_to(interim(kind, written)) as (url, _):
        for round_ in range(3):
            for stream_a in (True, False):
                for stream_b in (True, False):
                    a = ask(f"A{round_}", stream_a)
                    b = ask(f"B{round_}", stream_b)
                    assert (a, b) == (f"A{round_}", f"B{round_}")


# --- 3. clients leaving while the proxy connects upstream ------------------------------------


@contextmanager
def tls_that_never_answers() -> Iterator[int]:
    """Accepts TCP and never says a word: a TLS handshake to it hangs in the connect phase."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4096)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with suppress(TimeoutError, OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for sock in held:
            sock.close()
        server.close()


def raw_request(port: int, body: dict[str, Any], path: str = "/v1/chat/completions") -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n\r\n"
    ).encode() + data


def test_clients_leaving_during_connect_leak_no_pool_slot() -> None:
    with (
        tls_that_never_answers() as hang_port,
        serve_fake(sse_response(*answer_events("ok"))) as good,
    ):
        settings = Settings(
            upstreams={
                "hang": {
                    "type": "openai",
                    "base_url": f"https://127.0.0.1:{hang_port}/v1",
                    "timeouts": {"connect": 30},
                },
                "good": {"type": "openai", "base_url": good.url},
            },
            models={"hang": {"upstream": "hang"}, "good": {"upstream": "good"}},
            pool={"max_connections": 100},
        )
        with run_server(create_app(settings)) as url:
            port = int(url.rsplit(":", 1)[1])
            request = raw_request(port, {"model": "hang", "stream": True, "messages": MESSAGES})
            for _ in range(5):  # 1,000 clients, 200 at a time, each gone after 0.3 s
                socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
                for sock in socks:
                    sock.sendall(request)
                time.sleep(0.3)
                for sock in socks:
                    sock.close()
            time.sleep(0.5)
            response = post_model(url, "good")
            assert response.status_code == 200, response.text
            assert streamed_text(response) == "ok"


def post_model(url: str, model: str) -> requests.Response:
    body = {"model": model, "stream": True, "messages": MESSAGES}
    return requests.post(f"{url}/v1/chat/completions", json=body, timeout=20)


# --- 4. a client that closes right after sending is noticed at once --------------------------


def slow_forever() -> Any:
    async def handler(request: Recorded, reply: Reply) -> None:
        await reply.start()
        await reply.send(chunk(role="assistant"))
        while not reply.peer_closed.is_set():
            await reply.send(chunk("more "))
            await asyncio.sleep(0.1)

    return handler


def silent() -> Any:
    async def handler(request: Recorded, reply: Reply) -> None:
        await reply.until_closed(30)

    return handler


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("upstream", ["streaming", "silent"])
def test_client_closing_right_after_sending_closes_upstream_within_1s(
    how: str, upstream: str
) -> None:
    handler = slow_forever() if upstream == "streaming" else silent()
    with proxy_to(handler, timeouts={"first_byte": 30, "idle": 30}) as (url, fake):
        port = int(url.rsplit(":", 1)[1])
        late = []
        for stream in [True, False] * 10:
            requests_before, closed_before = len(fake.requests), len(fake.closed_at)
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(raw_request(port, {"model": "m", "stream": stream, "messages": MESSAGES}))
            if how == "rst":
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            closed = time.monotonic()
            sock.close()
            # Neither upstream ever ends by itself: every request the proxy started upstream
            # must be closed by it (or the proxy saw the close before it called the upstream).
            time.sleep(1.2)
            started = len(fake.requests) - requests_before
            assert len(fake.closed_at) - closed_before == started, "an upstream request runs on"
            late += [at - closed for at in fake.closed_at[closed_before:]]
        assert all(delay < 1.0 for delay in late), late


def test_pipelined_requests_then_close_is_noticed(caplog: pytest.LogCaptureFixture) -> None:
    with proxy_to(slow_forever(), timeouts={"first_byte": 30, "idle": 30}) as (url, fake):
        port = int(url.rsplit(":", 1)[1])
        one = raw_request(port, {"model": "m", "stream": True, "messages": MESSAGES})
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(one + one)
        time.sleep(0.3)
        closed = time.monotonic()
        sock.close()
        deadline = closed + 5
        while not fake.closed_at and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.closed_at and fake.closed_at[0] - closed < 1.0
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def floods() -> Any:
    """Streams 64 KB chunks as fast as the proxy takes them, until it goes away."""

    async def handler(request: Recorded, reply: Reply) -> None:
        await reply.start()
        await reply.send(chunk(role="assistant"))
        while not reply.peer_closed.is_set():
            await reply.send(chunk("x" * 65536))

    return handler


def test_deadline_then_a_client_that_never_reads_still_ends() -> None:
    """The deadline cancels the stream while its write is stuck (the client reads nothing); the
    error event cannot be written either; the send timeout must still end the request and
    close the upstream, well before the client gives up."""
    with proxy_to(
        floods(),
        timeouts={"first_byte": 30, "idle": 30, "total": 0.8},  # fires first
        keepalive_seconds=1.0,
        send_timeout_seconds=1.0,
    ) as (url, fake):
        port = int(url.rsplit(":", 1)[1])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(raw_request(port, {"model": "m", "stream": True, "messages": MESSAGES}))
        started = time.monotonic()
        deadline = started + 12
        while not fake.closed_at and time.monotonic() < deadline:
            time.sleep(0.05)
        sock.close()
        assert fake.closed_at, "the upstream was never closed while the client held on"
        assert fake.closed_at[0] - started < 6


def test_sigterm_ends_a_stream_whose_client_never_reads_within_the_grace(tmp_path: Path) -> None:
    with serve_fake(floods()) as fake:
        config = tmp_path / "proxy.yaml"
        config.write_text(
            "shutdown_grace_seconds: 1\nkeepalive_seconds: 30\n"
            f"upstreams: {{up: {{type: openai, base_url: '{fake.url}'}}}}\n"
            "models: {m: {upstream: up}}\n"
        )
        port = free_port()
        args = [sys.executable, "-m", "proxy", "--config", str(config), "--port", str(port)]
        with proxy_process(args, tmp_path, port=port) as (process, _, _):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(raw_request(port, {"model": "m", "stream": True, "messages": MESSAGES}))
            time.sleep(1.0)  # the proxy's writes to this client are stuck by now
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            code = process.wait(30)
            exited = time.monotonic() - signalled
            sock.close()
        assert code == 0
        assert exited < 1 + 2.5, exited  # the grace, then at most a moment for the last write
        assert fake.closed_at


# --- 5. floods from one connection -----------------------------------------------------------


def test_header_flood_gets_431_and_the_server_keeps_serving() -> None:
    with proxy_to(sse_response(*answer_events("ok"))) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        for head in (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n" + b"x-a: b\r\n" * 200_000,
            b"GET /healthz HTTP/1.1\r\nx-big: " + b"v" * 5_000_000,
            b"GET /" + b"u" * 5_000_000,
        ):
            sock = socket.create_connection(("127.0.0.1", port))
            started = time.monotonic()
            with suppress(OSError):
                sock.sendall(head)
            sock.settimeout(5)
            answer = b""
            with suppress(OSError):
                while chunk_ := sock.recv(65536):
                    answer += chunk_
            sock.close()
            assert time.monotonic() - started < 3
            status_line, _, rest = answer.partition(b"\r\n")
            assert status_line.startswith(b"HTTP/1.1 431"), answer[:200]
            body = json.loads(rest.partition(b"\r\n\r\n")[2])
            assert body["error"]["code"] == "request_header_too_large"
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of ``pid`` in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def test_header_floods_do_not_grow_the_process(tmp_path: Path) -> None:
    """20 MB and 100 MB of small headers, and a 100 MB header value, from unauthenticated
    connections: each is refused after the head limit, and the process stays small."""
    port = free_port()
    args = [sys.executable, "-m", "proxy", "--port", str(port)]
    with proxy_process(args, tmp_path, port=port) as (process, url, _):
        before, _ = rss_mib(process.pid)
        for size in (20_000_000, 100_000_000):
            for flood in (b"x-a: b\r\n", b"x-big: " + b"v" * 1_000_000):
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
                sent = 0
                with suppress(OSError):
                    while sent < size:
                        sock.sendall(flood * max(1, 65536 // len(flood)))
                        sent += max(65536, len(flood))
                sock.close()
        health = requests.get(f"{url}/healthz", timeout=5)
        _, peak = rss_mib(process.pid)
    print(f"RSS before {before:.0f} MiB, peak during the floods {peak:.0f} MiB")
    assert health.status_code == 200
    assert peak < before + 30, (before, peak)


def test_unparsable_request_gets_400_in_openai_shape() -> None:
    with proxy_to(sse_response(*answer_events("ok"))) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n"
        )
        sock.settimeout(5)
        answer = b""
        with suppress(OSError):
            while part := sock.recv(65536):
                answer += part
        sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400")
        assert b"application/json" in head
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"


def huge_headers() -> Any:
    async def handler(request: Recorded, reply: Reply) -> None:
        reply.writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        for _ in range(2000):  # 2,000 x 8 KB = 16 MB of headers, never ending
            if reply.writer.is_closing():
                return
            reply.writer.write(b"x-h: " + b"h" * 8000 + b"\r\n")
            await reply.writer.drain()

    return handler


def gzip_bomb() -> Any:
    import gzip

    bomb = gzip.compress(b"data: " + b"a" * 50_000_000 + b"\n\n")

    async def handler(request: Recorded, reply: Reply) -> None:
        await reply.start(
            200,
            {
                "content-type": "text/event-stream",
                "content-encoding": "gzip",
                "content-length": str(len(bomb)),
            },
            chunked=False,
        )
        reply.writer.write(bomb)
        await reply.writer.drain()

    return handler


def endless_line() -> Any:
    async def handler(request: Recorded, reply: Reply) -> None:
        await reply.start()
        await reply.send(chunk(role="assistant") + chunk("committed") + b"data: ")
        for _ in range(400):  # 200 MB of one line
            if reply.peer_closed.is_set():
                return
            await reply.send(b"z" * 500_000)

    return handler


def huge_error_body() -> Any:
    async def handler(request: Recorded, reply: Reply) -> None:
        await reply.start(500, {"content-type": "application/json"})
        for _ in range(400):  # 200 MB of error body
            if reply.peer_closed.is_set():
                return
            await reply.send(b" " * 500_000)

    return handler


@pytest.mark.parametrize(
    ("handler", "stream", "status", "code"),
    [
        (huge_headers, True, 502, "upstream_malformed"),
        (gzip_bomb, True, 502, "upstream_malformed"),
        (gzip_bomb, False, 502, "upstream_malformed"),
        (endless_line, True, 200, "upstream_malformed"),
        (huge_error_body, False, 500, None),
    ],
    ids=["response-head-flood", "gzip-stream", "gzip-json", "200MB-line", "200MB-error-body"],
)
def test_upstream_floods_are_bounded(
    handler: Any, stream: bool, status: int, code: str | None
) -> None:
    with proxy_to(handler()) as (url, _):
        started = time.monotonic()
        response = post(url, stream)
        elapsed = time.monotonic() - started
        assert response.status_code == status, response.text[:300]
        assert elapsed < 10
        if status == 200:
            last = response.text.strip().split("\n")[-1]
            assert json.loads(last[6:])["error"]["code"] == code
        elif code is not None:
            assert response.json()["error"]["code"] == code
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200


# --- 6. upstream shapes the normaliser cannot use, client inputs at library limits -----------


def shaped(payload: bytes, json_body: Any = None) -> Any:
    async def handler(request: Recorded, reply: Reply) -> None:
        if request.json().get("stream"):
            await sse_response(payload, chunk(finish="stop"), b"data: [DONE]\n\n")(request, reply)
        else:
            await reply.json(200, json_body)

    return handler


BAD_SHAPES = [
    ("choices 5", b'data: {"id":"u","choices":5}\n\n', {"choices": 5}),
    ("choices [1,2]", b'data: {"id":"u","choices":[1,2]}\n\n', {"choices": [1, 2]}),
    (
        "delta a string",
        b'data: {"id":"u","choices":[{"index":0,"delta":"hi"}]}\n\n',
        {"choices": [{"index": 0, "message": "hi"}]},
    ),
    (
        "tool_calls a string",
        b'data: {"id":"u","choices":[{"index":0,"delta":{"tool_calls":"x"}}]}\n\n',
        {"choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": "x"}}]},
    ),
    ("a list", b"data: [1,2,3]\n\n", [1, 2, 3]),
]


@pytest.mark.parametrize(("name", "event", "body"), BAD_SHAPES, ids=[s[0] for s in BAD_SHAPES])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_unusable_upstream_shapes_are_upstream_errors(
    name: str, event: bytes, body: Any, stream: bool
) -> None:
    with proxy_to(shaped(event, body)) as (url, _):
        response = post(url, stream)
        if stream and response.status_code == 200:
            last = response.text.strip().split("\n")[-1]
            assert "[DONE]" not in response.text
            assert json.loads(last[6:])["error"]["type"] == "upstream_error"
        else:
            assert response.status_code == 502, response.text
            assert response.json()["error"]["type"] == "upstream_error"


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": 3, "total_tokens": -2},
        {"prompt_tokens": "7", "completion_tokens": "x", "total_tokens": 7},
        {"prompt_tokens": 1e308, "completion_tokens": 1e308, "total_tokens": 1e308},
        {"prompt_tokens": True, "completion_tokens": None},
        "lots",
    ],
    ids=["negative", "strings", "1e308", "bool-null", "not-an-object"],
)
def test_bad_usage_numbers_are_ignored(usage: Any, caplog: pytest.LogCaptureFixture) -> None:
    events = [
        chunk(role="assistant"),
        chunk("ok"),
        chunk(finish="stop"),
        b"data: " + json.dumps({"id": "u", "choices": [], "usage": usage}).encode() + b"\n\n",
        b"data: [DONE]\n\n",
    ]
    with proxy_to(sse_response(*events)) as (url, _):
        for _ in range(2):
            response = post(url, True)
            assert response.status_code == 200
            assert response.text.rstrip().endswith("data: [DONE]")
        metrics = requests.get(f"{url}/metrics", timeout=10).text
    tokens = [line for line in metrics.splitlines() if line.startswith("proxy_tokens_total{")]
    assert tokens == []  # nothing counted, not +Inf, not negative
    missing = [
        line for line in metrics.splitlines() if line.startswith("proxy_usage_reports_total{")
    ]
    assert any('usage="missing"' in line and line.endswith(" 2.0") for line in missing), missing
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_client_inputs_at_library_limits_are_400() -> None:
    with proxy_to(sse_response(*answer_events("ok")), up={"type": "qwen"}) as (url, _):
        deep: Any = 1
        for _ in range(300):
            deep = [deep]
        cases = [
            {"model": "m", "messages": MESSAGES, "extra": deep},
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "text", "text": None}]}],
            },
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
            },
            {"model": "m", "messages": [{"role": "user", "content": [7]}]},
        ]
        for body in cases:
            response = requests.post(f"{url}/v1/chat/completions", json=body, timeout=10)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"]["type"] == "invalid_request_error"
        port = int(url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: "
            + b"9" * 4990
            + b"\r\n\r\n{}"
        )
        sock.settimeout(5)
        answer = sock.recv(65536)
        sock.close()
        assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 413")), answer[:100]


# --- 7. the stale keep-alive race -----------------------------------------------------------


def drops_reused_connections() -> Any:
    """Answers the first request of each connection; on a reused connection it closes without
    a word, as a server whose keep-alive timer fired just as the request crossed the wire."""
    served: dict[Any, int] = {}

    async def handler(request: Recorded, reply: Reply) -> None:
        peer = reply.writer.get_extra_info("peername")  # one connection (ids are reused)
        count = served[peer] = served.get(peer, 0) + 1
        if count > 1:
            reply.writer.transport.close()
            return
        await sse_response(*answer_events("ok"))(request, reply)

    return handler


def test_stale_keepalive_connection_is_retried_once() -> None:
    with proxy_to(drops_reused_connections()) as (url, fake):
        failures = []
        for _ in range(150):
            response = post(url, True)
            if response.status_code != 200 or streamed_text(response) != "ok":
                failures.append(response.text[:200])
        assert failures == []
        assert len(fake.requests) >= 150
