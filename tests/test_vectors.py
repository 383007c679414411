"""Every chat vector in tests/vectors, replayed through the proxy, gives openai-python the same
content, reasoning, tool calls, finish_reason and usage as the vector fed to it directly, or a
clean openai error for the error vectors, never a raw parser exception.

Two upstream paths: an ``httpx.MockTransport`` whose handler streams the vector chunk by chunk,
and a real fake upstream on a socket writing it in small TCP writes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest

from proxy import Settings, create_app
from tests.fake_upstream import Recorded, Reply, serve_fake
from tests.helpers import VECTORS, run_server, upstream_settings

# The chat completion streams (the Responses API vector is replayed by its own tests).
SSE_VECTORS = sorted(p.name for p in VECTORS.glob("*.sse") if "responses" not in p.name)
PIECE = 37  # bytes per transport chunk: lands inside UTF-8 characters, CRLFs and JSON


def pieces(name: str) -> list[bytes]:
    """The vector's bytes as transport chunks (its own boundaries if it has them)."""
    data = (VECTORS / name).read_bytes()
    bounds = VECTORS / name.replace(".sse", ".boundaries.json")
    if bounds.exists():
        cuts = [0, *json.loads(bounds.read_text())["split_after_byte_offsets"], len(data)]
    else:
        cuts = [*range(0, len(data), PIECE), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(cuts) if b > a]


def summarize(stream: Iterator[Any]) -> dict[str, Any]:
    """What a client gets out of a stream: text, reasoning, tool calls, finish, usage."""
    text, reasoning, finish, usage, estimated = "", "", None, None, False
    calls: dict[int, list[str]] = {}
    for chunk in stream:
        for choice in chunk.choices or ():
            delta = choice.delta
            text += delta.content or ""
            extra = delta.model_extra or {}
            reasoning += extra.get("reasoning_content") or extra.get("reasoning") or ""
            for call in delta.tool_calls or ():
                entry = calls.setdefault(call.index, ["", "", ""])
                entry[0] += call.id or ""
                entry[1] += (call.function.name or "") if call.function else ""
                entry[2] += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
        if chunk.usage:
            if (chunk.usage.model_extra or {}).get("estimated"):
                estimated = True  # the proxy's own estimate, kept apart from reported usage
            else:
                usage = chunk.usage.total_tokens
    summary = {
        "text": text,
        "reasoning": reasoning,
        "tools": calls,
        "finish": finish,
        "usage": usage,
    }
    if estimated:
        summary["estimated_usage"] = True
    return summary


def outcome(run: Any) -> dict[str, Any]:
    try:
        return run()  # type: ignore[no-any-return]
    except openai.APIError as exc:  # the clean, expected failure for error vectors
        return {"error": type(exc).__name__, "message": exc.message}


def direct(name: str) -> dict[str, Any]:
    """The vector fed straight to openai-python (what check_vectors.py does)."""
    try:
        import httpx2 as hx  # openai >= 3 ships its own httpx fork
    except ImportError:  # pragma: no cover - openai 1.x/2.x
        hx = httpx

    chunks = pieces(name)

    class Body(hx.SyncByteStream):  # type: ignore[misc,name-defined]
        def __iter__(self) -> Iterator[bytes]:
            yield from chunks

    def handler(request: Any) -> Any:
        headers = {"content-type": "text/event-stream; charset=utf-8"}
        return hx.Response(200, headers=headers, stream=Body())

    client = openai.OpenAI(
        api_key="x",
        base_url="http://vector.invalid/v1",
        max_retries=0,
        http_client=hx.Client(transport=hx.MockTransport(handler)),
    )
    return outcome(
        lambda: summarize(
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    )


def settings_for(base_url: str) -> Settings:
    return upstream_settings(base_url, key="sk-upstream-secret", model="upstream-model")


def through(url: str) -> dict[str, Any]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    return outcome(
        lambda: summarize(
            client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    )


def mock_transport(name: str) -> httpx.MockTransport:
    async def body() -> AsyncIterator[bytes]:
        for chunk in pieces(name):
            yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream; charset=utf-8"}, content=body()
        )

    return httpx.MockTransport(handler)


def expected(name: str) -> dict[str, Any]:
    """What openai-python gets from the vector directly, plus, through the proxy (whose client
    asks for include_usage), an estimated usage chunk where the vector has no usage."""
    result = direct(name)
    if name == "openai_error_midstream.sse":
        # Direct, the SDK raises APIError on the error event; through the proxy too.
        assert result["error"] == "APIError"
    elif result["usage"] is None:
        result["estimated_usage"] = True
    return result


@pytest.mark.parametrize("name", SSE_VECTORS)
def test_vector_through_mock_transport(name: str) -> None:
    app = create_app(settings_for("http://upstream.invalid/v1"), transport=mock_transport(name))
    with run_server(app) as url:
        got = through(url)
    assert got == expected(name)


@pytest.mark.parametrize("name", SSE_VECTORS)
def test_vector_through_socket_in_small_writes(name: str) -> None:
    async def handler(request: Recorded, reply: Reply) -> None:
        await reply.start()
        for chunk in pieces(name):
            await reply.send(chunk, pause=0.0005)
        await reply.end()

    with serve_fake(handler) as fake, run_server(create_app(settings_for(fake.url))) as url:
        got = through(url)
        assert fake.requests[0].json()["model"] == "upstream-model"
    assert got == expected(name)


def test_error_vector_is_a_clean_api_error() -> None:
    name = "openai_error_midstream.sse"
    app = create_app(settings_for("http://upstream.invalid/v1"), transport=mock_transport(name))
    with run_server(app) as url:
        got = through(url)
    assert got["error"] == "APIError"
    assert got["message"].startswith("The server had an error")


@pytest.mark.parametrize(
    ("name", "status", "exception", "message"),
    [
        ("openai_error_prestream_400.json", 400, openai.BadRequestError, "Input tokens exceed"),
        ("qwen_openai_api_error_400.json", 400, openai.BadRequestError, ""),
        (
            "qwen_openai_api_error_422.json",
            422,
            openai.UnprocessableEntityError,
            "body.messages: Field required",
        ),
    ],
)
def test_prestream_error_vectors(name: str, status: int, exception: type, message: str) -> None:
    raw = (VECTORS / name).read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"content-type": "application/json"}, content=raw)

    app = create_app(
        settings_for("http://upstream.invalid/v1"), transport=httpx.MockTransport(handler)
    )
    with run_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        for stream in (True, False):
            with pytest.raises(exception) as info:
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}], stream=stream
                )
            assert info.value.status_code == status
            body = info.value.body
            assert set(body) == {"message", "type", "param", "code"}
            assert message in body["message"]
            if name.startswith("qwen") and status == 400:
                assert body["message"] == json.loads(raw)["detail"]


@pytest.mark.parametrize("name", ["openai_nonstream.json", "qwen_openai_api_nonstream.json"])
def test_nonstream_vectors_both_ways(name: str) -> None:
    raw = (VECTORS / name).read_bytes()
    original = json.loads(raw)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "application/json"}, content=raw)

    app = create_app(
        settings_for("http://upstream.invalid/v1"), transport=httpx.MockTransport(handler)
    )
    with run_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        completion = client.chat.completions.create(model="m", messages=messages)
        assert completion.model == "m"
        assert completion.id  # filled in when the upstream (Qwen) sends none
        assert completion.choices[0].message.content == original["choices"][0]["message"]["content"]
        if "usage" in original:
            assert completion.usage is not None
            assert completion.usage.total_tokens == original["usage"]["total_tokens"]
        # The same JSON answer, to a streaming client, becomes proper SSE chunks.
        chunks = list(
            client.chat.completions.create(
                model="m", messages=messages, stream=True, stream_options={"include_usage": True}
            )
        )
        got = summarize(iter(chunks))
        assert got["text"] == original["choices"][0]["message"]["content"]
        assert got["finish"] == original["choices"][0]["finish_reason"]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert {c.id for c in chunks} == {chunks[0].id}
