"""POST /v1/responses passed through to an upstream that speaks Responses natively: the real
stream in ``tests/vectors/openai_responses_stream.sse`` replayed byte for byte (and with CRLF,
pings, tiny reads), the model names mapped both ways, sequence numbers renumbered without gaps,
quirks normalised, failures before the commit retried and after it passed on."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import orjson
import pytest

from proxy import Settings, create_app
from tests.fake_upstream import Recorded, Reply, serve_fake, sse_response
from tests.helpers import VECTORS, run_server
from tests.test_responses import client, frames

UPSTREAM_MODEL = "gpt-4-turbo-2024-04-09"
VECTOR = (VECTORS / "openai_responses_stream.sse").read_bytes()
VECTOR_FRAMES = VECTOR[:-2].split(b"\n\n")
NATIVE = {"apis": ["responses", "chat"]}


@contextmanager
def native(*handlers: Any, **settings: Any) -> Iterator[tuple[str, Any]]:
    """A proxy whose model ``m`` is served by a native Responses upstream; with several
    handlers, request n gets the n-th (the last repeats)."""
    requests: list[Recorded] = []

    async def handler(request: Recorded, reply: Reply) -> None:
        requests.append(request)
        await handlers[min(len(requests), len(handlers)) - 1](request, reply)

    with serve_fake(handler) as fake:
        up = {"type": "openai", "base_url": fake.url, **NATIVE, **settings.pop("up", {})}
        config = Settings(
            upstreams={"up": up},
            models={"m": {"upstream": "up", "model": UPSTREAM_MODEL}},
            routing={"backoff_seconds": 0.01, **settings.pop("routing", {})},
            **settings,
        )
        with run_server(create_app(config)) as url:
            yield url, fake


def expected_frame(raw: bytes, sequence: int) -> bytes:
    """A vector frame as the proxy must write it: renumbered, the public model name."""
    event, data = raw.split(b"\n")
    payload = orjson.loads(data[6:])
    payload["sequence_number"] = sequence
    if "response" in payload:
        payload["response"]["model"] = "m"
    return event + b"\ndata: " + orjson.dumps(payload)


@pytest.mark.parametrize(
    "variant",
    ["as captured", "crlf", "pings and 7-byte reads"],
)
def test_the_real_stream_replayed_byte_for_byte(variant: str) -> None:
    wire, piece = VECTOR, 0
    if variant == "crlf":
        wire = VECTOR.replace(b"\n", b"\r\n")
    elif variant.startswith("pings"):
        wire, piece = b": ping\n\n" + VECTOR.replace(b"\n\nevent:", b"\n\n: keepalive\n\nevent:"), 7
    with native(sse_response(wire, piece=piece)) as (url, fake):
        response = httpx.post(
            f"{url}/v1/responses",
            json={"model": "m", "input": "Hello!", "stream": True, "store": False},
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    out = response.content[:-2].split(b"\n\n")
    assert len(out) == len(VECTOR_FRAMES) == 10
    assert out == [expected_frame(raw, n) for n, raw in enumerate(VECTOR_FRAMES)]
    # The events without a response object and already in order are untouched, byte for byte.
    assert out[2:6] == VECTOR_FRAMES[2:6]
    sent = fake.requests[0]
    assert sent.path == "/v1/responses"
    assert sent.json() == {"model": UPSTREAM_MODEL, "input": "Hello!", "stream": True,
                           "store": False}  # fmt: skip


def test_openai_python_reads_the_passed_through_stream() -> None:
    with (
        native(sse_response(VECTOR)) as (url, _),
        client(url).responses.stream(model="m", input="Hello!") as stream,
    ):
        events = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(10))
    assert final.model == "m" and final.output_text.startswith("Hello there!")
    assert final.usage is not None and final.usage.total_tokens == 68


def test_native_upstreams_get_what_chat_upstreams_cannot() -> None:
    # previous_response_id and web_search are the upstream's business: nothing is refused.
    body = {
        "model": "m",
        "input": "and now?",
        "previous_response_id": "resp_123",
        "tools": [{"type": "web_search"}],
        "stream": True,
    }
    with native(sse_response(VECTOR)) as (url, fake):
        response = httpx.post(f"{url}/v1/responses", json=body)
    assert response.status_code == 200
    assert fake.requests[0].json() == {**body, "model": UPSTREAM_MODEL}


def event(kind: str | None, **fields: Any) -> bytes:
    """An event as a quirky server may send it (``kind=None``: no ``event:`` line)."""
    head = b"" if kind is None else b"event: " + kind.encode() + b"\n"
    return head + b"data: " + json.dumps(fields).encode() + b"\n\n"


RESPONSE = {"id": "resp_1", "object": "response", "status": "in_progress", "model": UPSTREAM_MODEL,
            "output": [], "usage": None}  # fmt: skip
ITEM = {
    "id": "msg_1",
    "type": "message",
    "status": "in_progress",
    "content": [],
    "role": "assistant",
}
DONE_RESPONSE = {**RESPONSE, "status": "completed", "usage": {"input_tokens": 1,
                 "output_tokens": 2, "total_tokens": 3}}  # fmt: skip


def test_quirks_are_normalised() -> None:
    quirky = [
        # only the event: line names it; sequence numbers from 5, with a gap, or none at all
        event("response.created", sequence_number=5, response=RESPONSE),
        event(None, type="response.output_item.added", sequence_number=9, output_index=0,
              item=ITEM),
        event("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0,
              delta="Hi"),
        b"data:\n\n",  # an empty event: dropped
        event("response.completed", type="response.completed", response=DONE_RESPONSE),
        b"data: [DONE]\n\n",
    ]  # fmt: skip
    with native(sse_response(*quirky)) as (url, _):
        response = httpx.post(f"{url}/v1/responses", json={"model": "m", "input": "x",
                                                          "stream": True})  # fmt: skip
    events = frames(response.text)
    assert [kind for kind, _ in events] == [
        "response.created",
        "response.output_item.added",
        "response.output_text.delta",
        "response.completed",
    ]
    assert [list(p)[:2] for _, p in events] == [["type", "sequence_number"]] * 4
    assert [p["sequence_number"] for _, p in events] == [0, 1, 2, 3]
    assert events[0][1]["response"]["model"] == events[-1][1]["response"]["model"] == "m"


def failing(kind: str, after: list[bytes] | None = None, *, end: bool = True) -> Any:
    """A native stream: response.created, the ``after`` events, then a failure of ``kind``."""
    if kind == "error":
        failure = event("error", type="error", sequence_number=9, code="server_error",
                        message="The model sk-secret1234567890abcdef fell over", param=None)  # fmt: skip
    else:
        failed = {**RESPONSE, "status": "failed",
                  "error": {"code": "server_error", "message": "The model fell over"}}  # fmt: skip
        failure = event("response.failed", type="response.failed", response=failed)
    created = event("response.created", type="response.created", response=RESPONSE)
    late = event("response.output_text.delta", type="response.output_text.delta", delta="late")
    return sse_response(created, *(after or []), failure, late, end=end)


OUTPUT = [
    event("response.output_item.added", type="response.output_item.added", output_index=0,
          item=ITEM),
    event("response.output_text.delta", type="response.output_text.delta", item_id="msg_1",
          output_index=0, content_index=0, delta="Hel"),
]  # fmt: skip


@pytest.mark.parametrize("kind", ["error", "response.failed"])
def test_a_failure_right_after_created_is_retried(kind: str) -> None:
    with native(failing(kind), sse_response(VECTOR)) as (url, fake):
        response = httpx.post(f"{url}/v1/responses", json={"model": "m", "input": "x",
                                                          "stream": True})  # fmt: skip
    assert len(fake.requests) == 2
    assert response.headers["x-proxy-attempts"] == "2"
    events = frames(response.text)
    assert len(events) == 10 and events[-1][0] == "response.completed"  # only the second's


@pytest.mark.parametrize("kind", ["error", "response.failed"])
def test_a_failure_after_the_commit_is_passed_on_and_ends_the_stream(kind: str) -> None:
    # The upstream keeps the connection open after its failure: the proxy ends the stream.
    with native(failing(kind, OUTPUT, end=False), routing={"retries": 0}) as (url, _):
        response = httpx.post(f"{url}/v1/responses", json={"model": "m", "input": "x",
                                                          "stream": True}, timeout=10)  # fmt: skip
        with pytest.raises(openai.APIError) if kind == "error" else _no_error():
            events = list(client(url).responses.create(model="m", input="x", stream=True))
    passed = frames(response.text)
    assert [k for k, _ in passed] == ["response.created", *[json.loads(o.split(b"data: ")[1])[
        "type"] for o in OUTPUT], kind]  # fmt: skip
    assert [p["sequence_number"] for _, p in passed] == [0, 1, 2, 3]
    last = passed[-1][1]
    if kind == "error":
        assert last["message"] == "The model *** fell over"  # scrubbed of what looks like a key
        assert last["error"]["message"] == last["message"]  # in both shapes
    else:
        assert last["response"]["model"] == "m"
        assert events[-1].type == "response.failed"
    assert "late" not in response.text


@contextmanager
def _no_error() -> Iterator[None]:
    yield


def test_a_connection_failure_after_the_commit_is_response_failed() -> None:
    async def cut(request: Recorded, reply: Reply) -> None:
        await reply.start()
        await reply.send(event("response.created", type="response.created", response=RESPONSE))
        for frame in OUTPUT:
            await reply.send(frame)
        await asyncio.sleep(0.05)
        reply.reset()

    with native(cut, routing={"retries": 0}) as (url, _):
        response = httpx.post(f"{url}/v1/responses", json={"model": "m", "input": "x",
                                                          "stream": True})  # fmt: skip
    events = frames(response.text)
    assert [p["sequence_number"] for _, p in events] == [0, 1, 2, 3]
    kind, failed = events[-1]
    assert kind == "response.failed" and failed["response"]["id"] == "resp_1"
    assert failed["response"]["status"] == "failed" and failed["response"]["model"] == "m"
    assert failed["response"]["error"]["code"] == "server_error"


def test_an_upstream_that_ends_before_a_terminal_event_is_truncated() -> None:
    created = event("response.created", type="response.created", response=RESPONSE)
    with native(sse_response(created, *OUTPUT), routing={"retries": 0}) as (url, _):
        response = httpx.post(f"{url}/v1/responses", json={"model": "m", "input": "x",
                                                          "stream": True})  # fmt: skip
    kind, failed = frames(response.text)[-1]
    assert kind == "response.failed"
    assert "before the response was complete" in failed["response"]["error"]["message"]


def test_non_stream_passes_the_response_object_through() -> None:
    answer = {**DONE_RESPONSE, "output": [{**ITEM, "status": "completed", "content": [
        {"type": "output_text", "text": "Hi", "annotations": []}]}]}  # fmt: skip

    async def json_answer(request: Recorded, reply: Reply) -> None:
        await reply.json(200, answer)

    with native(json_answer) as (url, fake):
        response = client(url).responses.create(model="m", input="x")
        streamed = httpx.post(f"{url}/v1/responses", json={"model": "m", "input": "x",
                                                          "stream": True})  # fmt: skip
    assert response.model == "m" and response.output_text == "Hi" and response.id == "resp_1"
    assert fake.requests[0].json() == {"model": UPSTREAM_MODEL, "input": "x"}
    # An upstream that answered JSON to a stream request: its response as a stream.
    events = frames(streamed.text)
    assert [k for k, _ in events] == ["response.created", "response.in_progress",
        "response.output_item.added", "response.output_item.done", "response.completed"]  # fmt: skip
    assert events[-1][1]["response"]["output"][0]["content"][0]["text"] == "Hi"


def test_a_native_stream_for_a_non_stream_client_is_aggregated() -> None:
    with native(sse_response(VECTOR), routing={"retries": 0}) as (url, _):
        config_route = {"model": "m", "input": "x"}
        response = httpx.post(f"{url}/v1/responses", json=config_route)
    # The upstream streamed although not asked to: its final response is the answer.
    assert response.status_code == 200
    assert response.json()["model"] == "m" and response.json()["status"] == "completed"


def test_a_server_that_keeps_the_connection_open_after_completed() -> None:
    created = event("response.created", type="response.created", response=RESPONSE)
    completed = event("response.completed", type="response.completed", response=DONE_RESPONSE)
    handler = sse_response(created, *OUTPUT, completed, end=False)
    with native(handler, up={"timeouts": {"idle": 30}}) as (url, _):
        started = time.monotonic()
        response = httpx.post(f"{url}/v1/responses", json={"model": "m", "input": "x",
                                                          "stream": True})  # fmt: skip
        elapsed = time.monotonic() - started
    assert frames(response.text)[-1][0] == "response.completed"
    assert elapsed < 5  # not the upstream's idle timeout
