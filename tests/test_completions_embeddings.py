"""POST /v1/completions and POST /v1/embeddings over real sockets with openai-python: answered by
the echo model, forwarded to upstreams that serve them (model names mapped both ways), refused
for those that do not, and going through the same key check, body limit, retries, access log
and metrics as chat."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import struct
import time
from typing import Any

import httpx
import openai
import pytest

from proxy import Settings, create_app
from tests.conftest import DELAY
from tests.fake_upstream import Recorded, Reply, serve_fake
from tests.fault_upstream import Faults, status
from tests.helpers import (
    BufferingWrapper,
    assert_true_streaming,
    echo_settings,
    proxy_for,
    run_server,
)
from tests.test_observability import scrape, value

TEXT = "one two three four five six seven eight nine ten"


def client(url: str, key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


# --- completions from the echo model ------------------------------------------------------------


def test_completion_non_stream(fast_url: str) -> None:
    answer = client(fast_url).completions.create(model="echo", prompt="say it back")
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
    assert answer.model == "echo"
    [choice] = answer.choices
    assert (choice.text, choice.index, choice.finish_reason) == ("say it back", 0, "stop")
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, 3)


def test_completion_stream_with_usage_and_done(fast_url: str) -> None:
    chunks = list(
        client(fast_url).completions.create(
            model="echo",
            prompt=["a b", [7, 8, 9]],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts: dict[int, str] = {}
    for chunk in chunks[:-1]:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: "a b", 1: "7 8 9"}  # token ids come back as their numbers
    assert [c.choices[0].finish_reason for c in chunks[:-1] if c.choices[0].finish_reason] == [
        "stop",
        "stop",
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 10
    assert {c.id for c in chunks} == {chunks[0].id} and {c.model for c in chunks} == {"echo"}
    raw = httpx.post(
        f"{fast_url}/v1/completions", json={"model": "echo", "prompt": "x y", "stream": True}
    )
    events = raw.text.split("\n\n")
    assert raw.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert '"usage"' not in raw.text  # not asked for


def test_completion_max_tokens_is_length(fast_url: str) -> None:
    answer = client(fast_url).completions.create(model="echo", prompt=TEXT, max_tokens=3)
    assert answer.choices[0].text == "one two three"
    assert answer.choices[0].finish_reason == "length"


def test_completion_stream_is_live(echo_url: str) -> None:
    times = completion_times(echo_url)
    assert_true_streaming(times[1:], times[0], DELAY)


def test_completion_negative_control() -> None:
    app = BufferingWrapper(create_app(echo_settings(echo={"delay_ms": DELAY * 1000})))
    with run_server(app) as url:
        times = completion_times(url)
    with pytest.raises(AssertionError, match="buffered"):
        assert_true_streaming(times[1:], times[0], DELAY)


def completion_times(url: str) -> list[float]:
    """The start, then the arrival time of each chunk with text."""
    times = [time.monotonic()]
    for chunk in client(url).completions.create(model="echo", prompt=TEXT, stream=True):
        if chunk.choices and chunk.choices[0].text:
            times.append(time.monotonic())
    return times


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "echo"}, "prompt"),
        ({"model": "echo", "prompt": ""}, "prompt"),
        ({"model": "echo", "prompt": ["ok", 5.5]}, "prompt[1]"),
        ({"model": "echo", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "echo", "prompt": "x", "stream": 1}, "stream"),
        ({"prompt": "x"}, "model"),
    ],
)
def test_completion_bad_requests(fast_url: str, body: dict[str, Any], param: str) -> None:
    response = httpx.post(f"{fast_url}/v1/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


# --- embeddings from the echo model ------------------------------------------------------------


def test_embeddings_float_and_base64_agree(fast_url: str) -> None:
    api = client(fast_url)
    floats = api.embeddings.create(model="echo", input=["hi", "there"], encoding_format="float")
    # openai-python asks for base64 unless told otherwise, and decodes it itself.
    default = api.embeddings.create(model="echo", input=["hi", "there"])
    raw = httpx.post(
        f"{fast_url}/v1/embeddings",
        json={"model": "echo", "input": "hi", "encoding_format": "base64"},
    ).json()
    assert floats.model == "echo" and floats.object == "list"
    assert [d.index for d in floats.data] == [0, 1]
    first = floats.data[0].embedding
    assert len(first) == 16 and math.isclose(math.fsum(x * x for x in first), 1.0, rel_tol=1e-6)
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    decoded = list(struct.unpack("<16f", base64.b64decode(raw["data"][0]["embedding"])))
    assert decoded == first
    assert floats.data[0].embedding != floats.data[1].embedding
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 2


def test_embeddings_are_deterministic_and_sized(fast_url: str) -> None:
    api = client(fast_url)
    once = api.embeddings.create(model="echo", input="same text", encoding_format="float")
    again = api.embeddings.create(model="echo", input=["same text"], encoding_format="float")
    assert once.data[0].embedding == again.data[0].embedding
    tokens = api.embeddings.create(model="echo", input=[[1, 2, 3], [4]], encoding_format="float")
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 4
    short = api.embeddings.create(model="echo", input="x", dimensions=4, encoding_format="float")
    assert len(short.data[0].embedding) == 4
    with run_server(create_app(echo_settings(echo={"embedding_dimensions": 64}))) as url:
        wide = client(url).embeddings.create(model="echo", input="x", encoding_format="float")
    assert len(wide.data[0].embedding) == 64


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "echo"}, "input"),
        ({"model": "echo", "input": []}, "input"),
        ({"model": "echo", "input": [[]]}, "input[0]"),
        ({"model": "echo", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "echo", "input": "x", "dimensions": -1}, "dimensions"),
    ],
)
def test_embeddings_bad_requests(fast_url: str, body: dict[str, Any], param: str) -> None:
    response = httpx.post(f"{fast_url}/v1/embeddings", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


# --- forwarded to upstreams that serve them ----------------------------------------------------


def text_chunk(text: str, finish: str | None = None) -> bytes:
    choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
    body = {"id": "cmpl-up", "object": "text_completion", "created": 5, "model": "up-model"}
    return b"data: " + json.dumps({**body, "choices": [choice]}).encode() + b"\n\n"


async def native_upstream(request: Recorded, reply: Reply) -> None:
    body = request.json()
    if request.path.endswith("/embeddings"):
        data = [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}]
        usage = {"prompt_tokens": 1, "total_tokens": 1}
        await reply.json(200, {"object": "list", "data": data, "model": "up-model",
                               "usage": usage})  # fmt: skip
    elif body.get("stream"):
        await reply.start()
        for event in (text_chunk("Once"), text_chunk(" upon"), text_chunk("", "length")):
            await reply.send(event)
        await reply.send(b"data: [DONE]\n\n")
        await reply.end()
    else:
        choice = {"text": "Once upon", "index": 0, "logprobs": None, "finish_reason": "length"}
        await reply.json(200, {"id": "cmpl-up", "object": "text_completion", "created": 5,
                               "model": "up-model", "choices": [choice]})  # fmt: skip


def test_forwarded_natively_with_the_model_names_mapped() -> None:
    with proxy_for(native_upstream, model="up-model") as (url, fake):
        api = client(url)
        chunks = list(api.completions.create(model="m", prompt="Tell me", stream=True))
        whole = api.completions.create(model="m", prompt="Tell me", max_tokens=2, echo=False)
        vectors = api.embeddings.create(model="m", input="hi", encoding_format="float")
    assert "".join(c.choices[0].text for c in chunks) == "Once upon"
    assert {c.model for c in chunks} == {"m"} and {c.id for c in chunks} == {"cmpl-up"}
    assert whole.model == "m" and whole.choices[0].text == "Once upon"
    assert whole.usage is not None  # the upstream sent none: an estimate
    assert vectors.model == "m" and vectors.data[0].embedding == [0.6, 0.8]
    paths = [request.path for request in fake.requests]
    assert paths == ["/v1/completions", "/v1/completions", "/v1/embeddings"]
    sent = [request.json() for request in fake.requests]
    assert {body["model"] for body in sent} == {"up-model"}
    assert sent[1] == {"model": "up-model", "prompt": "Tell me", "max_tokens": 2, "echo": False}
    assert sent[2]["encoding_format"] == "float"


@pytest.mark.parametrize(("path", "body"), [
    ("completions", {"prompt": "x"}),
    ("embeddings", {"input": "x"}),
])  # fmt: skip
def test_an_upstream_that_does_not_serve_it_is_a_400_naming_the_model(
    path: str, body: dict[str, Any]
) -> None:
    with proxy_for(native_upstream, up={"apis": ["chat"]}) as (url, fake):
        response = httpx.post(f"{url}/v1/{path}", json={"model": "m", **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "model" and error["code"] == "model_not_supported"
    assert f"'m' does not serve /v1/{path}" in error["message"]
    assert fake.requests == []


# --- what the endpoint base and the relay give every endpoint -----------------------------------


def test_a_503_is_retried_for_embeddings_and_completions() -> None:
    async def answer(request: Recorded, reply: Reply, name: str) -> None:
        await native_upstream(request, reply)

    flaky = Faults(status(503), answer, status(503), answer, name="a")
    with serve_fake(flaky) as fake:
        settings = Settings(
            upstreams={"a": {"type": "openai", "base_url": fake.url}},
            models={"m": {"upstream": "a"}},
            routing={"backoff_seconds": 0.01},
        )
        with run_server(create_app(settings)) as url:
            vectors = httpx.post(f"{url}/v1/embeddings", json={"model": "m", "input": "x"})
            text = httpx.post(f"{url}/v1/completions",
                              json={"model": "m", "prompt": "x", "stream": True})  # fmt: skip
    assert vectors.status_code == 200 and vectors.headers["x-proxy-attempts"] == "2"
    assert text.headers["x-proxy-attempts"] == "2" and text.text.endswith("data: [DONE]\n\n")
    assert len(flaky.attempts) == 4


ENDPOINT_BODIES = {
    "/v1/responses": {"model": "echo", "input": "hello there"},
    "/v1/completions": {"model": "echo", "prompt": "hello there"},
    "/v1/embeddings": {"model": "echo", "input": "hello there"},
}


@pytest.mark.parametrize("path", list(ENDPOINT_BODIES))
def test_the_key_and_the_body_limit_hold(path: str) -> None:
    settings = echo_settings(api_keys=["sk-proxy-key"], max_body_bytes=2000)
    with run_server(create_app(settings)) as url:
        body = ENDPOINT_BODIES[path]
        refused = httpx.post(f"{url}{path}", json=body)
        wrong = httpx.post(f"{url}{path}", json=body, headers={"authorization": "Bearer nope"})
        key = {"authorization": "Bearer sk-proxy-key"}
        too_big = httpx.post(f"{url}{path}", json={**body, "user": "x" * 3000}, headers=key)
        fine = httpx.post(f"{url}{path}", json=body, headers=key)
    assert refused.status_code == wrong.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert too_big.status_code == 413
    assert fine.status_code == 200


def test_access_log_and_metrics(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    with run_server(create_app(echo_settings())) as url:
        for path, body in ENDPOINT_BODIES.items():
            assert httpx.post(f"{url}{path}", json=body).status_code == 200
        stream = httpx.post(f"{url}/v1/responses",
                            json={**ENDPOINT_BODIES["/v1/responses"], "stream": True})  # fmt: skip
        assert stream.status_code == 200
        samples = scrape(url)
    lines = [r for r in caplog.records if r.name == "proxy.access"]
    fields = [getattr(r, "fields", {}) for r in lines][:-1]  # the last: GET /metrics
    assert [f.get("path") for f in fields] == [*ENDPOINT_BODIES, "/v1/responses"]
    assert all(f.get("status") == 200 and f.get("outcome") == "complete" for f in fields)
    labels = {"model": "echo", "upstream": "echo"}
    assert value(samples, "proxy_requests_total", **labels, stream="false", status="200") == 3
    assert value(samples, "proxy_requests_total", **labels, stream="true", status="200") == 1
    # Tokens, from each answer's usage in its own API's names: 2+2 for each Responses answer,
    # 2+2 for the completion, 2 for the embedding.
    assert value(samples, "proxy_tokens_total", **labels, type="prompt") == 2 + 2 + 2 + 2
    assert value(samples, "proxy_tokens_total", **labels, type="completion") == 2 + 2 + 2


def cut_after(texts: list[str]) -> Any:
    """A completions stream: ``texts`` (an empty one carries no answer), then a reset."""

    async def step(request: Recorded, reply: Reply, name: str) -> None:
        await reply.start()
        await reply.send(b"".join(text_chunk(text) for text in texts))
        await asyncio.sleep(0.05)
        reply.reset()

    return step


def test_a_completion_stream_commits_at_its_first_text() -> None:
    async def answer(request: Recorded, reply: Reply, name: str) -> None:
        await native_upstream(request, reply)

    # Before any text: retried, invisibly. After it: the error event, no [DONE], no retry.
    before, after = Faults(cut_after([""]), answer, name="a"), Faults(cut_after(["Once"]))
    with serve_fake(before) as first, serve_fake(after) as second:
        settings = Settings(
            upstreams={"a": {"type": "openai", "base_url": first.url},
                       "b": {"type": "openai", "base_url": second.url}},
            models={"m": {"upstream": "a"}, "n": {"upstream": "b"}},
            routing={"backoff_seconds": 0.01},
        )  # fmt: skip
        with run_server(create_app(settings)) as url:
            retried = httpx.post(f"{url}/v1/completions",
                                 json={"model": "m", "prompt": "x", "stream": True})  # fmt: skip
            cut = httpx.post(f"{url}/v1/completions",
                             json={"model": "n", "prompt": "x", "stream": True})  # fmt: skip
    assert len(before.attempts) == 2 and retried.text.endswith("data: [DONE]\n\n")
    assert retried.text.count('"text":""') == 1  # only the answering attempt's chunks
    events = [e for e in cut.text.split("\n\n") if e]
    assert len(after.attempts) == 1
    assert json.loads(events[0][6:])["choices"][0]["text"] == "Once"
    assert json.loads(events[-1][6:])["error"]["code"] == "upstream_connection_error"
    assert "[DONE]" not in cut.text
