"""Hostile clients and faulty upstreams, on real sockets: the proxy keeps serving others, every
fault becomes the contract's error within the configured timeouts, no upstream connection is
left open, and no key ever shows up in an answer."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx
import pytest
import requests

from proxy import create_app
from tests.fake_upstream import Recorded, Reply, serve_fake, sse_response
from tests.helpers import echo_settings, free_port, proxy_for, run_server, upstream_settings
from tests.test_upstream import DONE, GOOD, ROLE, chunk

KEY = "sk-upstream-hostile-0123456789"
CLIENT_KEY = "client-key-hostile-987654"
MESSAGES = [{"role": "user", "content": "hi"}]


def timed_request(url: str) -> float:
    started = time.perf_counter()
    response = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "echo", "messages": MESSAGES}, timeout=10
    )
    assert response.status_code == 200
    return time.perf_counter() - started


def latency(url: str, count: int = 20) -> float:
    return statistics.median(timed_request(url) for _ in range(count))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- hostile clients -------------------------------------------------------------------------


def test_slowloris_headers_and_bodies_do_not_slow_others() -> None:
    with run_server(create_app(echo_settings(body_timeout_seconds=1.0))) as url:
        port = int(url.rsplit(":", 1)[1])
        baseline = latency(url)
        sockets: list[socket.socket] = []
        # 150 clients trickling their headers, 50 trickling a body they announced.
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", port))
            if i < 150:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:
                sock.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
                )
            sockets.append(sock)
        stop = threading.Event()

        def trickle() -> None:
            while not stop.is_set():
                for sock in sockets[:150]:
                    with suppress(OSError):
                        sock.send(b"a")
                time.sleep(0.2)

        thread = threading.Thread(target=trickle)
        thread.start()
        try:
            under_attack = latency(url)
            # The body tricklers are answered 408 once body_timeout_seconds has passed.
            sockets[150].settimeout(5)
            answer = sockets[150].recv(65536).decode()
            assert answer.startswith("HTTP/1.1 408 ")
            assert '"code":"body_timeout"' in answer
        finally:
            stop.set()
            thread.join()
            for sock in sockets:
                sock.close()
        assert under_attack < max(10 * baseline, 0.25), (baseline, under_attack)
        assert latency(url, 5) < max(10 * baseline, 0.25)


def test_many_connections_opened_and_dropped() -> None:
    with run_server(create_app(echo_settings())) as url:
        port = int(url.rsplit(":", 1)[1])
        timed_request(url)
        before = open_fds()
        for i in range(2000):
            sock = socket.create_connection(("127.0.0.1", port))
            if i % 3 == 1:
                sock.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{"
                )
            elif i % 3 == 2:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )  # RST
            sock.close()
        assert timed_request(url) < 2
        deadline = time.monotonic() + 10
        while open_fds() > before + 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert open_fds() <= before + 5  # the server closed its side of all of them


def endless(request: Recorded, reply: Reply) -> Any:
    async def run() -> None:
        await reply.start()
        await reply.send(ROLE)
        payload = chunk("x" * 4000)
        while not reply.peer_closed.is_set():
            await reply.send(payload)
            await asyncio.sleep(0)

    return run()


def test_client_that_never_reads_is_dropped_and_upstream_closed() -> None:
    with serve_fake(endless) as fake:
        settings = upstream_settings(fake.url, keepalive_seconds=0.3, send_timeout_seconds=0.5)
        with run_server(create_app(settings)) as url:
            port = int(url.rsplit(":", 1)[1])
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            body = json.dumps({"model": "m", "stream": True, "messages": MESSAGES}).encode()
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            started = time.monotonic()
            while not fake.closed_at and time.monotonic() - started < 10:  # never reading
                time.sleep(0.05)
            assert fake.closed_at, "the upstream was kept open for a client that does not read"
            assert fake.closed_at[0] - started < 5
            sock.close()
            other = httpx.get(f"{url}/healthz")  # others are still served
            assert other.status_code == 200


# --- upstream faults ------------------------------------------------------------------------


def faulty(name: str) -> Any:
    async def handler(request: Recorded, reply: Reply) -> None:
        if name == "reset before headers":
            reply.reset()
        elif name == "reset after headers":
            await reply.start()
            await reply.send(ROLE)
            await asyncio.sleep(0.05)
            reply.reset()
        elif name == "stall before first byte":
            await reply.until_closed(10)
        elif name == "stall between chunks":
            await reply.start()
            await reply.send(ROLE + chunk("a"))
            await reply.until_closed(10)
        elif name == "invalid json in a chunk":
            await sse_response(ROLE, b"data: {nope\n\n", *GOOD[1:])(request, reply)
        elif name == "10 MB valid line":
            await sse_response(
                ROLE, chunk("y" * (10 * 1024 * 1024)), chunk(finish="stop"), DONE, piece=65536
            )(request, reply)
        elif name == "10 MB garbage line":
            await sse_response(ROLE, b"data: " + b"z" * (10 * 1024 * 1024) + b"\n\n", piece=65536)(
                request, reply
            )
        elif name == "text/html 200":
            await reply.start(200, {"content-type": "text/html"}, chunked=False)
            reply.writer.write(b"<html>oops</html>")
            reply.writer.close()
        elif name == "text/plain stream":
            await reply.start(200, {"content-type": "text/plain"})
            await reply.send(b"data: hello\n\n")
            await reply.end()
        elif name == "500 with html":
            await reply.start(500, {"content-type": "text/html"}, chunked=False)
            reply.writer.write(b"<html><h1>Internal Server Error</h1></html>")
            reply.writer.close()
        elif name == "never ends":
            await reply.start()
            await reply.send(ROLE)
            while not reply.peer_closed.is_set():
                await reply.send(chunk("more "))
                await asyncio.sleep(0.05)
        elif name == "key in error":
            await reply.json(401, {"error": {"message": f"bad key {KEY}", "type": "auth"}})

    return handler


# (fault, status, error code: in the body before the stream commits, in the last event after)
# A failure before any content (only the role chunk went) is an HTTP error: nothing committed.
FAULTS = [
    ("reset before headers", 502, "upstream_connection_error"),
    ("reset after headers", 502, "upstream_connection_error"),
    ("stall before first byte", 504, "upstream_timeout"),
    ("stall between chunks", 200, "upstream_idle_timeout"),
    ("invalid json in a chunk", 502, "upstream_malformed"),
    ("10 MB valid line", 200, None),
    ("10 MB garbage line", 502, "upstream_malformed"),
    ("text/html 200", 502, "upstream_malformed"),
    ("text/plain stream", 502, "upstream_malformed"),
    ("500 with html", 500, None),
    ("never ends", 200, "upstream_deadline"),
    ("key in error", 401, None),
]


@contextmanager
def proxy_with_fault(name: str) -> Iterator[tuple[str, Any]]:
    timeouts = {"first_byte": 0.5, "idle": 0.5, "total": 1.5}
    with proxy_for(
        faulty(name),
        key=KEY,
        up={"timeouts": timeouts},
        api_keys=[CLIENT_KEY],
        routing={"retries": 0},  # one attempt each: the fault's own answer, counted below
    ) as (url, fake):
        yield url, fake


def fault_request(url: str) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.post(
        f"{url}/v1/chat/completions",
        json={"model": "m", "stream": True, "messages": MESSAGES},
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        timeout=30,
    )
    return response, time.monotonic() - started


@pytest.mark.parametrize(("name", "status", "code"), FAULTS, ids=[f[0] for f in FAULTS])
def test_upstream_fault(name: str, status: int, code: str | None) -> None:
    with proxy_with_fault(name) as (url, fake):
        for _ in range(3):  # three times: a leaked upstream connection would add up
            response, elapsed = fault_request(url)
            assert response.status_code == status, response.text[:300]
            text = response.text
            if status == 200:
                last = [line for line in text.split("\n") if line][-1]
                if code is None:
                    assert last == "data: [DONE]"
                    assert len(text) > 10 * 1024 * 1024  # the 10 MB chunk arrived whole
                else:
                    assert "data: [DONE]" not in text
                    assert json.loads(last[6:])["error"]["code"] == code
            else:
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                if code is not None:
                    assert error["code"] == code
            assert elapsed < 5  # every bound here is 0.5-1.5 s
            for secret in (KEY, CLIENT_KEY):
                assert secret not in text and secret not in str(response.headers)
        # Nothing left open but, at most, one idle keep-alive connection in the pool (when the
        # upstream's HTTP body itself completed cleanly, the connection is fine to reuse).
        deadline = time.monotonic() + 3
        while fake.open_connections > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.open_connections <= 1, name
        # A reset before any byte of answer is sent once more (it may be a stale keep-alive).
        assert len(fake.requests) == (6 if name == "reset before headers" else 3)
        metrics = httpx.get(f"{url}/metrics").text
        assert KEY not in metrics and CLIENT_KEY not in metrics


def test_requests_without_a_valid_key_cost_no_upstream_call() -> None:
    with proxy_with_fault("key in error") as (url, fake):
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {CLIENT_KEY}x"},
        ):
            response = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "m", "messages": MESSAGES},
                headers=headers,
            )
            assert response.status_code == 401
        assert fake.requests == []


def test_refused_upstream_is_502_quickly() -> None:
    # One attempt: the retries' backoff (tests/test_routing.py) is not what is timed here.
    settings = upstream_settings(
        f"http://127.0.0.1:{free_port()}/v1", key=KEY, routing={"retries": 0}
    )
    with run_server(create_app(settings)) as url:
        started = time.monotonic()
        response = httpx.post(
            f"{url}/v1/chat/completions", json={"model": "m", "stream": True, "messages": MESSAGES}
        )
        assert response.status_code == 502 and time.monotonic() - started < 2
        assert KEY not in response.text
