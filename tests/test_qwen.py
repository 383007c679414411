"""Qwen: a fake of Qwen's ``openai_api.py`` built like the original (FastAPI + sse-starlette's
``EventSourceResponse`` with its default CRLF framing and pings, pydantic models dumped with
``exclude_unset`` so there is no ``id`` and no ``created``), and DashScope's compatible mode."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Literal

import httpx
import openai
import pytest
import requests
from fastapi import FastAPI
from pydantic import BaseModel, Field
from sse_starlette.sse import EventSourceResponse

from proxy import Settings, create_app
from tests.helpers import VECTORS, assert_true_streaming, run_server

ANSWER = "你好！我是通义千问，很高兴为你服务。"
DELAY = 0.08


class ChatMessage(BaseModel):
    role: Literal["user", "assistant", "system", "function"]
    content: str | None = None


class DeltaMessage(BaseModel):
    role: Literal["user", "assistant", "system"] | None = None
    content: str | None = None


class ChatCompletionRequest(BaseModel):
    model: str
    messages: list[ChatMessage]
    stream: bool | None = False
    stop: list[str] | None = None


class StreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: Literal["stop", "length"] | None


class Choice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    model: str
    object: Literal["chat.completion", "chat.completion.chunk"]
    choices: list[StreamChoice | Choice]
    created: int | None = Field(default_factory=lambda: int(time.time()))


def qwen_openai_api() -> FastAPI:
    """The request/response behaviour of QwenLM/Qwen openai_api.py (stream branch, L467-L531)."""
    app = FastAPI()

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def create_chat_completion(request: ChatCompletionRequest):  # type: ignore[no-untyped-def]
        if request.stream:
            return EventSourceResponse(predict(request.model), ping=1)
        message = ChatMessage(role="assistant", content=ANSWER)
        return ChatCompletionResponse(
            model=request.model,
            object="chat.completion",
            choices=[Choice(index=0, message=message, finish_reason="stop")],
        )

    async def predict(model: str) -> AsyncIterator[str]:
        def dump(delta: DeltaMessage, finish: Literal["stop"] | None = None) -> str:
            choice = StreamChoice(index=0, delta=delta, finish_reason=finish)
            chunk = ChatCompletionResponse(
                model=model, choices=[choice], object="chat.completion.chunk"
            )
            return chunk.model_dump_json(exclude_unset=True)

        yield dump(DeltaMessage(role="assistant"))
        for char in ANSWER:
            await asyncio.sleep(DELAY)
            yield dump(DeltaMessage(content=char))
        yield dump(DeltaMessage(), "stop")
        yield "[DONE]"

    return app


@pytest.fixture(scope="module")
def proxy_url() -> Iterator[str]:
    with run_server(qwen_openai_api()) as qwen:
        settings = Settings(
            upstreams={"local-qwen": {"type": "qwen", "base_url": f"{qwen}/v1"}},
            models={"qwen": {"upstream": "local-qwen", "model": "Qwen-72B-Chat-Int4"}},
        )
        with run_server(create_app(settings)) as url:
            yield url


def test_fake_is_faithful_to_the_vector() -> None:
    # Straight from the fake (not through the proxy): the bytes look like qwen_openai_api.sse.
    with run_server(qwen_openai_api()) as fake:
        raw = httpx.post(
            f"{fake}/v1/chat/completions",
            json={"model": "Qwen", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        ).content
    vector = (VECTORS / "qwen_openai_api.sse").read_bytes()
    assert raw.split(b"\r\n\r\n")[0] == vector.split(b"\r\n\r\n")[0]  # the same role chunk bytes
    assert raw.endswith(b"data: [DONE]\r\n\r\n") and vector.endswith(b"data: [DONE]\r\n\r\n")
    assert b'"id"' not in raw and b'"created"' not in raw


def test_qwen_stream_through_proxy_is_live_and_normalised(proxy_url: str) -> None:
    client = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="x", max_retries=0)
    started = time.monotonic()
    chunks, times = [], []
    for chunk in client.chat.completions.create(
        model="qwen", messages=[{"role": "user", "content": "你好"}], stream=True
    ):
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.monotonic())
    assert_true_streaming(times, started, DELAY)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert len({c.created for c in chunks}) == 1 and chunks[0].created
    assert {c.model for c in chunks} == {"qwen"}
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_qwen_raw_wire_is_lf_and_data_only(proxy_url: str) -> None:
    body = {"model": "qwen", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with requests.post(f"{proxy_url}/v1/chat/completions", json=body, stream=True, timeout=30) as r:
        raw = b"".join(r.iter_content(None))
    assert b"\r" not in raw and b"ping" not in raw
    assert raw.endswith(b"\n\ndata: [DONE]\n\n")


def test_qwen_non_stream(proxy_url: str) -> None:
    client = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(
        model="qwen", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == ANSWER
    assert completion.id.startswith("chatcmpl-") and completion.model == "qwen"


def test_qwen_list_content_and_string_stop_are_adapted(proxy_url: str) -> None:
    # openai_api.py answers 422 to both; the qwen upstream type sends what it accepts.
    client = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(
        model="qwen",
        stop="\n",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    )
    assert completion.choices[0].message.content == ANSWER


def test_qwen_422_passed_on_in_openai_shape(proxy_url: str) -> None:
    client = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(
            model="qwen",
            messages=[{"role": "tool", "content": "x", "tool_call_id": "a"}],
            stream=True,
        )
    assert "body.messages.0.role" in info.value.body["message"]
    assert set(info.value.body) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("vector", ["dashscope_compatible.sse", "reasoning_content.sse"])
def test_dashscope_compatible_mode(vector: str) -> None:
    data = (VECTORS / vector).read_bytes()

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 29):
            yield data[i : i + 29]

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, headers={"content-type": "text/event-stream;charset=UTF-8"}, content=body()
        )

    settings = Settings(
        upstreams={
            "dashscope": {
                "type": "qwen",
                "api_key": "sk-dash-123456",
                "base_url": "https://dashscope.aliyuncs.com/compatible-mode/v1",
            }
        },
        models={"qwen-plus": {"upstream": "dashscope"}},
    )
    with run_server(create_app(settings, transport=httpx.MockTransport(handler))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        chunks = list(
            client.chat.completions.create(
                model="qwen-plus",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert str(seen[0].url) == "https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-dash-123456"
    events = [
        json.loads(line[6:]) for line in data.decode().split("\n") if line.startswith("data: {")
    ]
    content = "".join(
        (e["choices"][0]["delta"].get("content") or "") for e in events if e["choices"]
    )
    reasoning = "".join(
        (e["choices"][0]["delta"].get("reasoning_content") or "") for e in events if e["choices"]
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    got_reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    assert got_reasoning == reasoning
    assert (
        chunks[-1].usage is not None
        and chunks[-1].usage.total_tokens == events[-1]["usage"]["total_tokens"]
    )
