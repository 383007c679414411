"""True streaming through real clients over a real socket, and the proof the tests can tell.

Each timing test streams a 10-word message from the echo model (DELAY between words) and
asserts the first word arrives before 40% of the stream's duration and the gaps follow DELAY.
The negative control runs the same assertion through a buffering hop and expects it to fail.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import requests

from proxy import create_app
from tests.conftest import DELAY
from tests.helpers import (
    VECTORS,
    BufferingWrapper,
    assert_true_streaming,
    echo_settings,
    openai_arrivals,
    run_server,
)

TEXT = "one two three four five six seven eight nine ten"
WORDS = ["one"] + [" " + w for w in TEXT.split()[1:]]
BODY = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": TEXT}]}


def content_of(line: bytes) -> str | None:
    if not line.startswith(b"data: {"):
        return None
    chunk = json.loads(line[6:])
    choices = chunk.get("choices") or [{}]
    return choices[0].get("delta", {}).get("content") or None


def requests_times(url: str) -> tuple[float, list[float], list[str]]:
    started = time.monotonic()
    with requests.post(f"{url}/v1/chat/completions", json=BODY, stream=True, timeout=30) as r:
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        times, words = [], []
        for line in r.iter_lines():
            word = content_of(line)
            if word:
                times.append(time.monotonic())
                words.append(word)
    return started, times, words


def test_openai_sync_stream_is_live(echo_url: str) -> None:
    client = openai.OpenAI(base_url=f"{echo_url}/v1", api_key="x", max_retries=0)
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": TEXT}], stream=True
    )
    chunks, times = [], []
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.monotonic())
    assert_true_streaming(times, started, DELAY)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {"echo"}
    assert all(c.object == "chat.completion.chunk" and c.created for c in chunks)


def test_openai_async_stream_is_live(echo_url: str) -> None:
    async def run() -> tuple[float, list[float], str]:
        client = openai.AsyncOpenAI(base_url=f"{echo_url}/v1", api_key="x", max_retries=0)
        started = time.monotonic()
        stream = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": TEXT}], stream=True
        )
        times, text = [], ""
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                times.append(time.monotonic())
                text += chunk.choices[0].delta.content
        await client.close()
        return started, times, text

    started, times, text = asyncio.run(run())
    assert_true_streaming(times, started, DELAY)
    assert text == TEXT


def test_openai_include_usage(fast_url: str) -> None:
    client = openai.OpenAI(base_url=f"{fast_url}/v1", api_key="x", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="echo",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "a b c"},
            ],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        5,
        3,
        8,
    )
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])


def test_no_usage_chunk_unless_asked(fast_url: str) -> None:
    client = openai.OpenAI(base_url=f"{fast_url}/v1", api_key="x", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "a b"}], stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize("stream", [False, None], ids=["stream-false", "stream-absent"])
def test_openai_non_stream(fast_url: str, stream: bool | None) -> None:
    client = openai.OpenAI(base_url=f"{fast_url}/v1", api_key="x", max_retries=0)
    extra = {} if stream is None else {"stream": stream}
    completion = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "你好 world"}], **extra
    )
    assert completion.object == "chat.completion"
    assert completion.model == "echo"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "你好 world"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 2


def test_max_tokens_truncates_with_length(fast_url: str) -> None:
    client = openai.OpenAI(base_url=f"{fast_url}/v1", api_key="x", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": TEXT}], stream=True, max_tokens=3
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two three"
    assert chunks[-1].choices[0].finish_reason == "length"
    done = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": TEXT}], max_completion_tokens=2
    )
    assert done.choices[0].message.content == "one two"
    assert done.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("model", "api_key", "exception", "status"),
    [
        ("nope", "sk-proxy-1", openai.NotFoundError, 404),
        ("echo", "wrong", openai.AuthenticationError, 401),
    ],
)
def test_openai_status_errors(model: str, api_key: str, exception: type, status: int) -> None:
    with run_server(create_app(echo_settings(api_keys=["sk-proxy-1"]))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)
        for stream in (True, False):
            with pytest.raises(exception) as info:
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "x"}], stream=stream
                )
            assert info.value.status_code == status
            assert info.value.body["code"] in ("model_not_found", "invalid_api_key")


def test_openai_bad_request_error(fast_url: str) -> None:
    client = openai.OpenAI(base_url=f"{fast_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="echo", messages=[{"role": "robot", "content": "x"}])
    assert info.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.APIStatusError) as too_big:
        openai.OpenAI(
            base_url=f"{fast_url}/v1", api_key="x", max_retries=0
        ).chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x" * (21 * 1024 * 1024)}]
        )
    assert too_big.value.status_code == 413


def test_requests_iter_lines_is_live(echo_url: str) -> None:
    started, times, words = requests_times(echo_url)
    assert_true_streaming(times, started, DELAY)
    assert words == WORDS


def test_requests_without_stream_true_buffers(echo_url: str) -> None:
    """The client's own pseudo-streaming: without stream=True, requests reads the whole body
    before post() returns, so every line 'arrives' at the end. The server streamed fine."""
    started = time.monotonic()
    r = requests.post(f"{echo_url}/v1/chat/completions", json=BODY, timeout=30)
    returned = time.monotonic() - started
    times = [time.monotonic() for line in r.iter_lines() if content_of(line)]
    assert len(times) == 10
    assert returned >= 0.8 * 9 * DELAY  # post() waited for the whole stream
    with pytest.raises(AssertionError, match="buffered"):
        assert_true_streaming(times, started, DELAY)


def test_httpx_iter_lines_is_live(echo_url: str) -> None:
    started = time.monotonic()
    times = []
    with httpx.stream("POST", f"{echo_url}/v1/chat/completions", json=BODY, timeout=30) as r:
        for line in r.iter_lines():
            if content_of(line.encode()):
                times.append(time.monotonic())
    assert_true_streaming(times, started, DELAY)


def test_char_chunks_classic_demo() -> None:
    # chunk: char with a delay: one character per event, spaced by the delay.
    settings = echo_settings(echo={"chunk": "char", "delay_ms": 60})
    with run_server(create_app(settings)) as url:
        started = time.monotonic()
        body = {**BODY, "messages": [{"role": "user", "content": "你好, world"}]}
        times, chars = [], []
        with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=30) as r:
            for line in r.iter_lines(decode_unicode=True):
                word = content_of(line.encode())
                if word:
                    times.append(time.monotonic())
                    chars.append(word)
    assert chars == list("你好, world")
    assert_true_streaming(times, started, 0.06)


@pytest.fixture(scope="module")
def buffered_url() -> Iterator[str]:
    app = create_app(echo_settings(echo={"delay_ms": DELAY * 1000}))
    with run_server(BufferingWrapper(app)) as url:
        yield url


def test_negative_control_requests_catches_buffering(buffered_url: str) -> None:
    started, times, words = requests_times(buffered_url)
    assert words == WORDS  # the same content arrives...
    with pytest.raises(AssertionError, match="buffered"):  # ...but the test sees it is not live
        assert_true_streaming(times, started, DELAY)


def test_negative_control_openai_catches_buffering(buffered_url: str) -> None:
    started, times = openai_arrivals(buffered_url, TEXT)
    with pytest.raises(AssertionError, match="buffered"):
        assert_true_streaming(times, started, DELAY)


EVENT = re.compile(rb"data: (\{.*?\}|\[DONE\])\n\n", re.S)


def test_wire_bytes_match_openai_shape(fast_url: str) -> None:
    """Our bytes have OpenAI's framing, key order and chunk shapes (openai_basic.sse and
    openai_usage_chunk.sse)."""
    body = {**BODY, "stream_options": {"include_usage": True}}
    ours = httpx.post(f"{fast_url}/v1/chat/completions", json=body).content
    theirs = (VECTORS / "openai_usage_chunk.sse").read_bytes()
    for wire in (ours, theirs):
        assert b"".join(m.group(0) for m in EVENT.finditer(wire)) == wire  # nothing but events
        assert wire.endswith(b"\n\ndata: [DONE]\n\n") and b"\r" not in wire

    def shape(wire: bytes) -> list[object]:
        chunks = [json.loads(m.group(1)) for m in EVENT.finditer(wire) if m.group(1) != b"[DONE]"]
        out: list[object] = []
        for chunk in (chunks[0], chunks[1], chunks[-2], chunks[-1]):
            keys = [k for k in chunk if k != "system_fingerprint"]
            choices = [(list(c), c["delta"], c["finish_reason"]) for c in chunk["choices"]]
            out.append(
                (keys, [(k, {d: type(v) for d, v in delta.items()}, f) for k, delta, f in choices])
            )
        out.append(
            {"prompt_tokens", "completion_tokens", "total_tokens"} <= set(chunks[-1]["usage"])
        )
        return out

    assert shape(ours) == shape(theirs)


def test_stream_headers(fast_url: str) -> None:
    response = httpx.post(f"{fast_url}/v1/chat/completions", json=BODY)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-encoding" not in response.headers


def test_requests_decodes_chinese_with_charset(fast_url: str) -> None:
    body = {**BODY, "messages": [{"role": "user", "content": "你好 世界"}]}
    with requests.post(f"{fast_url}/v1/chat/completions", json=body, stream=True, timeout=30) as r:
        text = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in r.iter_lines(decode_unicode=True)
            if line.startswith("data: {")
        )
    assert r.encoding == "utf-8"
    assert text == "你好 世界"


def test_models_health_ready(fast_url: str) -> None:
    models = openai.OpenAI(base_url=f"{fast_url}/v1", api_key="x").models.list()
    assert [m.id for m in models.data] == ["echo"]
    assert httpx.get(f"{fast_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{fast_url}/readyz").json() == {"status": "ready"}
