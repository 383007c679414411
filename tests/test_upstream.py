"""Forwarding to an OpenAI-compatible upstream: what is sent, shape conversion, failures,
keepalive and disconnects. Upstreams are fake servers on real sockets (or MockTransport)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
import requests

from proxy import Settings, create_app
from tests import helpers
from tests.fake_upstream import Recorded, Reply, sse_response
from tests.helpers import free_port, run_server, upstream_settings

KEY = "sk-upstream-secret-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {
        "id": "up-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


ROLE = (
    b'data: {"id":"up-1","object":"chat.completion.chunk","created":1,"model":"upstream-model",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
)
DONE = b"data: [DONE]\n\n"
GOOD = [ROLE, chunk("Hel"), chunk("lo"), chunk(finish="stop"), DONE]


@pytest.fixture(autouse=True, params=["aiohttp", "httpx"])
def transport_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs over both upstream transports: aiohttp's (the default) and httpx's,
    chosen the way a user would, through the environment."""
    monkeypatch.setenv("PROXY_POOL__TRANSPORT", request.param)


# One attempt per request: these tests are about how one upstream's answers and failures
# reach the client; retries and fallbacks are tests/test_routing.py's.
ONCE = {"retries": 0}


def settings(base_url: str, **overrides: Any) -> Settings:
    overrides.setdefault("routing", ONCE)
    return upstream_settings(base_url, key=KEY, model="upstream-model", **overrides)


@contextmanager
def proxy_for(handler: Any, **overrides: Any) -> Iterator[tuple[str, Any]]:
    overrides.setdefault("routing", ONCE)
    with helpers.proxy_for(handler, key=KEY, model="upstream-model", **overrides) as (url, fake):
        yield url, fake


def client(url: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="client-key", max_retries=0, **kwargs)


def raw_lines(url: str, body: dict[str, Any] | None = None) -> list[str]:
    body = body or {"model": "m", "stream": True, "messages": MESSAGES}
    with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=30) as r:
        assert r.status_code == 200, r.text
        return [line for line in r.iter_lines(decode_unicode=True) if line]


# --- what is sent upstream -------------------------------------------------------------------


def test_request_sent_upstream() -> None:
    with proxy_for(sse_response(*GOOD)) as (url, fake):
        body = {
            "model": "m",
            "stream": True,
            "messages": MESSAGES,
            "temperature": 0.3,
            "some_future_field": {"nested": [1, 2]},
        }
        headers = {
            "Authorization": "Bearer client-key",
            "X-Request-ID": "req-42",
            "Cookie": "session=1",
            "Connection": "keep-alive, X-Custom",
            "X-Custom": "hop",
            "TE": "trailers",
            "Proxy-Authorization": "Basic eDp5",
        }
        response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 200
        sent = fake.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.json() == {**body, "model": "upstream-model"}  # unknown fields untouched
    assert sent.headers["authorization"] == f"Bearer {KEY}"  # ours, never the client's
    assert sent.headers["x-request-id"] == "req-42"
    for hop in ("cookie", "x-custom", "te", "proxy-authorization"):
        assert hop not in sent.headers
    assert sent.headers.get("accept-encoding") == "identity"


def test_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UP_KEY", "sk-from-env-123456")
    with proxy_for(sse_response(*GOOD), up={"api_key": None, "api_key_env": "UP_KEY"}) as (
        url,
        fake,
    ):
        raw_lines(url)
        assert fake.requests[0].headers["authorization"] == "Bearer sk-from-env-123456"


def test_model_name_public_on_every_chunk_and_id_constant() -> None:
    with proxy_for(sse_response(*GOOD)) as (url, _):
        chunks = list(
            client(url).chat.completions.create(model="m", messages=MESSAGES, stream=True)
        )
    assert {c.model for c in chunks} == {"m"}
    assert {c.id for c in chunks} == {"up-1"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello"


def test_non_stream_client_gets_non_stream_upstream() -> None:
    completion = {
        "id": "c1",
        "object": "chat.completion",
        "created": 5,
        "model": "upstream-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hey", "reasoning": "hmm"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }

    async def handler(request: Recorded, reply: Reply) -> None:
        await reply.json(200, completion)

    with proxy_for(handler) as (url, fake):
        got = client(url).chat.completions.create(model="m", messages=MESSAGES)
        assert "stream" not in fake.requests[0].json()
    assert got.model == "m" and got.choices[0].message.content == "hey"
    assert (got.choices[0].message.model_extra or {})["reasoning_content"] == "hmm"
    assert got.usage is not None and got.usage.total_tokens == 2


# --- shape conversion ------------------------------------------------------------------------

AGGREGATE = [
    b'data: {"id":"s1","object":"chat.completion.chunk","created":9,"model":"q","choices":[{"index":0,"delta":{"role":"assistant","content":null,"reasoning_content":""},"finish_reason":null}]}\n\n',
    b'data: {"id":"s1","object":"chat.completion.chunk","created":9,"model":"q","choices":[{"index":0,"delta":{"reasoning_content":"let me "},"finish_reason":null}]}\n\n',
    b'data: {"id":"s1","object":"chat.completion.chunk","created":9,"model":"q","choices":[{"index":0,"delta":{"reasoning":"think"},"finish_reason":null}]}\n\n',
    b'data: {"id":"s1","object":"chat.completion.chunk","created":9,"model":"q","choices":[{"index":0,"delta":{"content":"Calling"},"finish_reason":null}]}\n\n',
    b'data: {"id":"s1","object":"chat.completion.chunk","created":9,"model":"q","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}\n\n',
    b'data: {"id":"s1","object":"chat.completion.chunk","created":9,"model":"q","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{}"}}]},"finish_reason":null}]}\n\n',
    b'data: {"id":"s1","object":"chat.completion.chunk","created":9,"model":"q","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\":"}}]},"finish_reason":null}]}\n\n',
    b'data: {"id":"s1","object":"chat.completion.chunk","created":9,"model":"q","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"Paris\\"}"}}]},"finish_reason":null}]}\n\n',
    b'data: {"id":"s1","object":"chat.completion.chunk","created":9,"model":"q","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n',
    b'data: {"id":"s1","object":"chat.completion.chunk","created":9,"model":"q","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10}}\n\n',
    DONE,
]


def test_force_stream_aggregates_for_non_stream_client() -> None:
    async def stream_only(request: Recorded, reply: Reply) -> None:
        body = request.json()
        if body.get("stream") is not True:  # like some DashScope models
            await reply.json(400, {"error": {"message": "only streaming is supported"}})
            return
        await reply.start()
        for event in AGGREGATE:
            await reply.send(event, piece=50)
        await reply.end()

    with proxy_for(stream_only, route={"force_stream": True}) as (url, fake):
        got = client(url).chat.completions.create(model="m", messages=MESSAGES)
        assert fake.requests[0].json()["stream_options"] == {"include_usage": True}
    assert got.object == "chat.completion" and got.model == "m" and got.id == "s1"
    message = got.choices[0].message
    assert message.content == "Calling"
    assert (message.model_extra or {})["reasoning_content"] == "let me think"
    assert message.tool_calls is not None
    calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls]  # type: ignore[union-attr]
    assert calls == [("call_a", "get_weather", '{"city":"Paris"}'), ("call_b", "get_time", "{}")]
    assert got.choices[0].finish_reason == "tool_calls"
    assert got.usage is not None and got.usage.total_tokens == 10


def test_stream_client_json_upstream_gets_sse() -> None:
    completion = {
        "id": "c1",
        "object": "chat.completion",
        "created": 5,
        "model": "x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "whole answer"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }

    async def ignores_stream_flag(request: Recorded, reply: Reply) -> None:
        await reply.json(200, completion)

    with proxy_for(ignores_stream_flag) as (url, fake):
        lines = raw_lines(
            url,
            {
                "model": "m",
                "stream": True,
                "messages": MESSAGES,
                "stream_options": {"include_usage": True},
            },
        )
        assert fake.requests[0].json()["stream"] is True  # it was asked to stream
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert lines[-1] == "data: [DONE]"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert (
        "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        == "whole answer"
    )
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 3
    assert {e["model"] for e in events} == {"m"}


def test_qwen_type_adapts_request() -> None:
    with proxy_for(sse_response(*GOOD), up={"type": "qwen"}) as (url, fake):
        body = {
            "model": "m",
            "stream": True,
            "stop": "\n",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
        }
        raw_lines(url, body)
        sent = fake.requests[0].json()
    assert sent["messages"][0]["content"] == "ab"
    assert sent["stop"] == ["\n"]


# --- failures before the stream: HTTP statuses -----------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_connection_refused_is_502(stream: bool) -> None:
    app = create_app(settings(f"http://127.0.0.1:{free_port()}/v1"))
    with run_server(app) as url:
        with pytest.raises(openai.InternalServerError) as info:
            client(url).chat.completions.create(model="m", messages=MESSAGES, stream=stream)
        assert info.value.status_code == 502
        assert info.value.body["code"] == "upstream_unreachable"
        r = requests.post(
            f"{url}/v1/chat/completions",
            json={"model": "m", "stream": stream, "messages": MESSAGES},
        )
        assert r.status_code == 502 and r.json()["error"]["message"].startswith(
            "The upstream 'up' could not"
        )


async def garbage(request: Recorded, reply: Reply) -> None:
    reply.writer.write(b"this is not HTTP at all\r\n\r\n")
    await reply.writer.drain()
    reply.writer.close()


async def wrong_content_type(request: Recorded, reply: Reply) -> None:
    await reply.start(200, {"content-type": "text/html"}, chunked=False)
    reply.writer.write(b"<html>hello</html>")
    reply.writer.close()


async def closes_before_headers(request: Recorded, reply: Reply) -> None:
    reply.reset()


@pytest.mark.parametrize(
    ("handler", "code"),
    [
        (garbage, "upstream_malformed"),  # not HTTP at all
        (wrong_content_type, "upstream_malformed"),
        (closes_before_headers, "upstream_connection_error"),
    ],
    ids=["garbage", "html-200", "reset-before-headers"],
)
def test_bad_upstream_response_is_502(handler: Any, code: str) -> None:
    with proxy_for(handler) as (url, _):
        r = requests.post(
            f"{url}/v1/chat/completions", json={"model": "m", "stream": True, "messages": MESSAGES}
        )
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == code


def test_no_headers_within_first_byte_is_504() -> None:
    async def slow(request: Recorded, reply: Reply) -> None:
        await reply.until_closed(10)

    with proxy_for(slow, up={"timeouts": {"first_byte": 0.5, "idle": 30}}) as (url, _fake):
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            client(url).chat.completions.create(model="m", messages=MESSAGES, stream=True)
        elapsed = time.monotonic() - started
        assert info.value.status_code == 504
        assert "0.5 s" in info.value.body["message"]
        assert 0.4 < elapsed < 5  # first_byte, not idle


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
def test_upstream_status_passed_on_scrubbed(status: int) -> None:
    message = f"Incorrect API key provided: {KEY}. Also sk-otherkey99999 and Bearer abcdefghij."

    async def handler(request: Recorded, reply: Reply) -> None:
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": "x",
                "code": "c1",
            }
        }
        await reply.json(status, body, {"retry-after": "7"})

    with proxy_for(handler) as (url, _):
        for stream in (True, False):
            r = requests.post(
                f"{url}/v1/chat/completions",
                json={"model": "m", "stream": stream, "messages": MESSAGES},
            )
            assert r.status_code == status
            error = r.json()["error"]
            assert error["message"].startswith("Incorrect API key provided: ***")
            assert "sk-" not in r.text and "abcdefghij" not in r.text and KEY not in r.text
            assert (error["type"], error["param"], error["code"]) == (
                "invalid_request_error",
                "x",
                "c1",
            )
            assert (r.headers.get("retry-after") == "7") == (status in (429, 503))


def test_upstream_html_error_body() -> None:
    async def handler(request: Recorded, reply: Reply) -> None:
        await reply.start(502, {"content-type": "text/html"}, chunked=False)
        reply.writer.write(b"<html><body>Bad Gateway</body></html>")
        reply.writer.close()

    with proxy_for(handler) as (url, _):
        r = requests.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert r.status_code == 502
    assert r.json()["error"]["message"] == "The upstream answered 502 Bad Gateway."


# --- failures after the stream started: an error event, no [DONE] ---------------------------


def stalls_after(*events: bytes, stall: float = 30) -> Any:
    async def handler(request: Recorded, reply: Reply) -> None:
        await reply.start()
        for event in events:
            await reply.send(event)
        await reply.until_closed(stall)

    return handler


def resets_after(*events: bytes) -> Any:
    async def handler(request: Recorded, reply: Reply) -> None:
        await reply.start()
        for event in events:
            await reply.send(event)
        await asyncio.sleep(0.05)
        reply.reset()

    return handler


MIDSTREAM = [
    ("idle timeout", stalls_after(ROLE, chunk("Hel")), "upstream_idle_timeout"),
    ("reset", resets_after(ROLE, chunk("Hel")), "upstream_connection_error"),
    ("truncated clean close", sse_response(ROLE, chunk("Hel")), "upstream_truncated"),
    ("done without finish", sse_response(ROLE, chunk("Hel"), DONE), "upstream_truncated"),
    (
        "invalid json",
        sse_response(ROLE, chunk("Hel"), b"data: {not json\n\n", *GOOD[2:]),
        "upstream_malformed",
    ),
    (
        "in-stream error",
        sse_response(
            ROLE,
            chunk("Hel"),
            b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n',
        ),
        "upstream_stream_error",
    ),
    (
        "vllm error then done",
        sse_response(
            ROLE,
            chunk("Hel"),
            b'data: {"object": "error", "message": "boom", "type": "x"}\n\n',
            DONE,
        ),
        "upstream_stream_error",
    ),
    (
        "llama.cpp error field",
        sse_response(
            ROLE,
            chunk("Hel"),
            b'error: {"code":400,"message":"ctx full","type":"invalid_request_error"}\n\n',
            DONE,
        ),
        "upstream_stream_error",
    ),
]

# The same failures before any content: the stream has not committed, so the client gets an
# HTTP error (after the retries and fallbacks the routing allows, none here).
PRESTREAM = [
    ("idle timeout", stalls_after(ROLE), 504, "upstream_idle_timeout"),
    ("reset", resets_after(ROLE), 502, "upstream_connection_error"),
    ("truncated clean close", sse_response(ROLE), 502, "upstream_truncated"),
    ("invalid json", sse_response(ROLE, b"data: {not json\n\n"), 502, "upstream_malformed"),
    (
        "in-stream error",
        sse_response(
            ROLE, b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
        ),
        502,
        "upstream_stream_error",
    ),
]


@pytest.mark.parametrize(
    ("name", "handler", "status", "code"), PRESTREAM, ids=[m[0] for m in PRESTREAM]
)
def test_failure_before_content_is_an_http_error(
    name: str, handler: Any, status: int, code: str
) -> None:
    with proxy_for(handler, up={"timeouts": {"first_byte": 10, "idle": 0.5}}) as (url, _):
        response = requests.post(
            f"{url}/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": MESSAGES},
            timeout=30,
        )
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        with pytest.raises(openai.APIStatusError) as info:  # the SDK raises before any chunk
            list(client(url).chat.completions.create(model="m", messages=MESSAGES, stream=True))
        assert info.value.status_code == status


@pytest.mark.parametrize(("name", "handler", "code"), MIDSTREAM, ids=[m[0] for m in MIDSTREAM])
def test_midstream_failure_is_error_event_without_done(name: str, handler: Any, code: str) -> None:
    with proxy_for(handler, up={"timeouts": {"first_byte": 10, "idle": 0.5}}) as (url, _):
        lines = raw_lines(url)
        assert "data: [DONE]" not in lines
        last = json.loads(lines[-1][6:])
        assert set(last) == {"error"} and last["error"]["code"] == code
        assert set(last["error"]) == {"message", "type", "param", "code"}
        with pytest.raises(openai.APIError) as info:  # and the SDK raises
            list(client(url).chat.completions.create(model="m", messages=MESSAGES, stream=True))
        assert info.value.message == last["error"]["message"]


def test_missing_done_after_finish_is_completed() -> None:
    with proxy_for(sse_response(*GOOD[:-1])) as (url, _):
        lines = raw_lines(url)
    assert lines[-1] == "data: [DONE]"


def test_idle_timeout_differs_from_first_byte() -> None:
    # Headers at once, then silence: the idle timeout (0.5 s) applies, not first_byte (20 s).
    # (Before any content: an HTTP 504; after content it is the error event, MIDSTREAM.)
    with proxy_for(stalls_after(ROLE), up={"timeouts": {"first_byte": 20, "idle": 0.5}}) as (
        url,
        _,
    ):
        started = time.monotonic()
        response = requests.post(
            f"{url}/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": MESSAGES},
            timeout=30,
        )
        elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert "silent for more than 0.5 s" in response.json()["error"]["message"]
    assert 0.4 < elapsed < 5


def test_upstream_pings_and_comments_are_not_forwarded() -> None:
    events = [
        ROLE,
        b": ping - 2025-01-01 00:00:00\r\n\r\n",
        b"event: ping\ndata: {}\n\n",
        b"id: 5\nretry: 100\n\n",
        b"data:\n\n",
        *GOOD[1:],
    ]
    with proxy_for(sse_response(*events)) as (url, _):
        lines = raw_lines(url)
    assert all(line.startswith("data: ") for line in lines)
    assert len(lines) == 5


# --- keepalive and disconnects -----------------------------------------------------------------


def test_keepalive_pings_while_upstream_is_silent() -> None:
    async def thinking(request: Recorded, reply: Reply) -> None:
        await reply.start()
        await asyncio.sleep(1.0)  # silent before the first token, as thinking models are
        await reply.send(ROLE)
        for event in GOOD[1:]:
            await reply.send(event)
        await reply.end()

    with proxy_for(thinking, keepalive_seconds=0.2) as (url, _):
        with requests.post(
            f"{url}/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": MESSAGES},
            stream=True,
        ) as r:
            lines = [line for line in r.iter_lines(decode_unicode=True) if line]
        pings = [line for line in lines if line == ": ping"]
        assert 3 <= len(pings) <= 6  # about one per 0.2 s of the 1 s silence
        assert lines.index(": ping") < lines.index(next(x for x in lines if x.startswith("data:")))
        assert lines[-1] == "data: [DONE]"
        # openai-python ignores the comments
        chunks = list(
            client(url).chat.completions.create(model="m", messages=MESSAGES, stream=True)
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello"


def slow_stream(request: Recorded, reply: Reply) -> Any:
    async def run() -> None:
        await reply.start()
        await reply.send(ROLE)
        for i in range(200):
            await reply.send(chunk(f"w{i} "))
            if reply.peer_closed.is_set():
                return
            await asyncio.sleep(0.05)
        await reply.end()

    return run()


def test_client_disconnect_closes_upstream_within_1s() -> None:
    with proxy_for(slow_stream) as (url, fake):
        with requests.post(
            f"{url}/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": MESSAGES},
            stream=True,
        ) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
            left = time.monotonic()
        deadline = left + 5
        while not fake.closed_at and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.closed_at, "the proxy kept the upstream request open"
        assert fake.closed_at[0] - left < 1.0
        assert len(fake.requests) == 1


def test_openai_client_closing_stream_closes_upstream() -> None:
    with proxy_for(slow_stream) as (url, fake):
        stream = client(url).chat.completions.create(model="m", messages=MESSAGES, stream=True)
        next(iter(stream))
        stream.close()
        left = time.monotonic()
        while not fake.closed_at and time.monotonic() < left + 5:
            time.sleep(0.01)
        assert fake.closed_at and fake.closed_at[0] - left < 1.0


def test_abandoned_non_stream_request_closes_upstream() -> None:
    async def slow_json(request: Recorded, reply: Reply) -> None:
        await reply.until_closed(10)

    with proxy_for(slow_json) as (url, fake):
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(
                f"{url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, timeout=0.5
            )
        left = time.monotonic()
        while not fake.closed_at and time.monotonic() < left + 5:
            time.sleep(0.01)
        assert fake.closed_at, "the proxy kept the upstream request open"
        assert fake.closed_at[0] - left < 1.0
        assert left - started < 2


def test_shared_client_closed_at_shutdown() -> None:
    app = create_app(settings("http://127.0.0.1:9/v1"))
    with run_server(app):
        wire = app.state.services.wire
        assert wire.is_open
    assert not wire.is_open
