"""POST /v1/responses translated from chat completions, over real sockets with openai-python:
the whole event lifecycle from the echo model and from fake chat upstreams, a function-calling
round trip, the errors before and after the stream commits, routing, disconnects, and the
timing test with its negative control. (Native pass-through: ``test_responses_native.py``.)"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
import pytest
import requests

from proxy import Settings, create_app
from tests.conftest import DELAY
from tests.fake_upstream import Recorded, Reply, serve_fake
from tests.fault_upstream import Faults, ok, status
from tests.helpers import (
    BufferingWrapper,
    assert_true_streaming,
    echo_settings,
    proxy_for,
    run_server,
)

TEXT = "one two three four five six seven eight nine ten"
LIFECYCLE = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 3,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)


def frames(body: str) -> list[tuple[str, dict[str, Any]]]:
    """A Responses stream's frames, checked to be exactly ``event: <type>\\ndata: <json>``
    with the type repeated in the JSON (``: ping`` comments are skipped)."""
    assert body.endswith("\n\n"), body[-200:]
    events = []
    for frame in body[:-2].split("\n\n"):
        if frame == ": ping":
            continue
        event, data = frame.split("\n")
        assert event.startswith("event: ") and data.startswith("data: "), frame
        payload = json.loads(data[6:])
        assert payload["type"] == event[7:]
        events.append((event[7:], payload))
    return events


def post_stream(url: str, body: dict[str, Any]) -> tuple[httpx.Response, list[tuple[str, Any]]]:
    response = httpx.post(f"{url}/v1/responses", json={**body, "stream": True}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    return response, frames(response.text)


def check_numbered(events: list[tuple[str, dict[str, Any]]]) -> None:
    assert [payload["sequence_number"] for _, payload in events] == list(range(len(events)))


# --- the echo model, translated --------------------------------------------------------------


def test_stream_from_the_echo_model(fast_url: str) -> None:
    events = list(
        client(fast_url).responses.create(model="echo", input="one two three", stream=True)
    )
    assert [e.type for e in events] == LIFECYCLE
    assert [e.sequence_number for e in events] == list(range(len(LIFECYCLE)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["one", " two", " three"]
    created, final = events[0].response, events[-1].response
    assert created.id == final.id and final.id.startswith("resp_")
    assert created.status == "in_progress" and created.output == [] and created.usage is None
    assert final.status == "completed" and final.model == "echo"
    assert final.output_text == "one two three"
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (
        3,
        3,
        6,
    )


def test_stream_helper_checks_the_order_and_accumulates(fast_url: str) -> None:
    with client(fast_url).responses.stream(
        model="echo", input="alpha beta gamma", instructions="Be brief."
    ) as stream:
        snapshots = [e.snapshot for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert snapshots == ["alpha", "alpha beta", "alpha beta gamma"]
    assert final.output_text == "alpha beta gamma"
    assert final.instructions == "Be brief."


def test_non_stream_is_one_response_object(fast_url: str) -> None:
    response = client(fast_url).responses.create(model="echo", input="hello there")
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_") and response.model == "echo"
    assert response.output_text == "hello there"
    assert response.usage is not None and response.usage.output_tokens == 2
    [message] = response.output
    assert message.type == "message" and message.status == "completed"


@pytest.mark.parametrize("stream", [True, False])
def test_max_output_tokens_is_incomplete_with_usage(fast_url: str, stream: bool) -> None:
    body = {"model": "echo", "input": TEXT, "max_output_tokens": 2}
    if stream:
        _, events = post_stream(fast_url, body)
        check_numbered(events)
        kind, last = events[-1]
        assert kind == "response.incomplete"
        response = last["response"]
    else:
        response = httpx.post(f"{fast_url}/v1/responses", json=body).json()
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["content"][0]["text"] == "one two"
    assert response["usage"]["output_tokens"] == 2 and response["usage"]["input_tokens"] == 10


def test_pings_between_events_are_ignored_by_openai_python() -> None:
    settings = echo_settings(echo={"delay_ms": 150}, keepalive_seconds=0.05)
    with run_server(create_app(settings)) as url:
        raw = httpx.post(f"{url}/v1/responses", json={"model": "echo", "input": "a b c",
                                                     "stream": True}).text  # fmt: skip
        events = list(client(url).responses.create(model="echo", input="a b c", stream=True))
    assert raw.count(": ping\n\n") >= 2
    assert [e.type for e in events] == LIFECYCLE
    assert events[-1].response.output_text == "a b c"


def test_wire_frames_are_openais(fast_url: str) -> None:
    response, events = post_stream(fast_url, {"model": "echo", "input": "a b"})
    assert "[DONE]" not in response.text and "\r" not in response.text
    check_numbered(events)
    assert events[-1][0] == "response.completed"
    assert response.headers["x-proxy-model"] == "echo"


# --- function calling through Responses over a chat upstream ---------------------------------

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


def chat_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up-model"}
    return b"data: " + json.dumps({**body, "choices": [choice], **extra}).encode() + b"\n\n"


def call_fragment(**fields: Any) -> dict[str, Any]:
    return {"tool_calls": [{"index": 0, **fields}]}


USAGE = {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}
TOOL_CALL_STREAM = [
    chat_chunk({"role": "assistant", "content": None}),
    chat_chunk(call_fragment(id="call_abc", type="function", function={"name": "get_weather"})),
    chat_chunk(call_fragment(function={"arguments": '{"city":'})),
    chat_chunk(call_fragment(function={"arguments": '"Paris"}'})),
    chat_chunk({}, "tool_calls"),
    b'data: {"id":"c1","choices":[],"usage":' + json.dumps(USAGE).encode() + b"}\n\n",
    b"data: [DONE]\n\n",
]
ANSWER = "It is 21 C in Paris."


async def weather_upstream(request: Recorded, reply: Reply) -> None:
    """A chat upstream: a tool call first, the answer once the tool's output is in."""
    body = request.json()
    answered = any(m["role"] == "tool" for m in body["messages"])
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": ANSWER}
        if not answered:
            function = {"name": "get_weather", "arguments": '{"city":"Paris"}'}
            call = {"id": "call_abc", "type": "function", "function": function}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        completion = {"id": "c1", "object": "chat.completion", "created": 1, "model": "x"}
        await reply.json(200, {**completion, "choices": [choice], "usage": USAGE})
        return
    await reply.start()
    if answered:
        for event in (
            chat_chunk({"role": "assistant"}),
            chat_chunk({"content": "It is 21 C"}),
            chat_chunk({"content": " in Paris."}),
            chat_chunk({}, "stop"),
            b"data: [DONE]\n\n",  # no usage: the final event carries an estimate
        ):
            await reply.send(event)
    else:
        for event in TOOL_CALL_STREAM:
            await reply.send(event)
    await reply.end()


@pytest.mark.parametrize("stream", [True, False])
def test_function_call_round_trip(stream: bool) -> None:
    with proxy_for(weather_upstream, model="up-model") as (url, fake):
        api = client(url)
        question = {"role": "user", "content": "Weather in Paris?"}
        if stream:
            events = list(
                api.responses.create(model="m", input=[question], tools=TOOLS, stream=True)
            )
            arguments = "".join(
                e.delta for e in events if e.type == "response.function_call_arguments.delta"
            )
            assert arguments == '{"city":"Paris"}'
            assert [e.sequence_number for e in events] == list(range(len(events)))
            first = events[-1].response
        else:
            first = api.responses.create(model="m", input=[question], tools=TOOLS)
        [call] = first.output
        assert call.type == "function_call" and call.status == "completed"
        assert (call.name, call.arguments, call.call_id) == (
            "get_weather",
            '{"city":"Paris"}',
            "call_abc",
        )
        follow_up = [
            question,
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "21 C"},
        ]  # fmt: skip
        if stream:
            with api.responses.stream(model="m", input=follow_up, tools=TOOLS) as answer:
                final = answer.get_final_response()
        else:
            final = api.responses.create(model="m", input=follow_up, tools=TOOLS)
        assert final.output_text == ANSWER
        assert final.usage is not None and final.usage.output_tokens > 0
    sent = [request.json() for request in fake.requests]
    assert all(request.path == "/v1/chat/completions" for request in fake.requests)
    assert sent[0]["model"] == "up-model"
    assert sent[0]["tools"] == [
        {"type": "function", "function": {k: v for k, v in TOOLS[0].items() if k != "type"}}
    ]
    if stream:
        assert sent[0]["stream_options"] == {"include_usage": True}
    assert sent[1]["messages"] == [
        question,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "21 C"},
    ]  # fmt: skip


def test_usage_after_the_finish_reason_reaches_the_final_event() -> None:
    with proxy_for(weather_upstream) as (url, _):
        _, events = post_stream(url, {"model": "m", "input": "Weather?", "tools": TOOLS})
    kinds = [kind for kind, _ in events]
    assert kinds.index("response.function_call_arguments.done") < kinds.index("response.completed")
    usage = events[-1][1]["response"]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (20, 7, 27)
    assert "estimated" not in usage


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "hi"}, "model", "missing_required_parameter"),
        ({"model": "echo"}, "input", "missing_required_parameter"),
        ({"model": "echo", "input": 5}, "input", "invalid_type"),
        ({"model": "echo", "input": "hi", "stream": "yes"}, "stream", "invalid_type"),
        ({"model": "echo", "input": "hi", "max_output_tokens": 0}, "max_output_tokens",
         "invalid_value"),
        ({"model": "echo", "input": [{"role": "wizard", "content": "x"}]}, "input[0].role",
         "invalid_value"),
        ({"model": "echo", "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type",
         "unsupported_value"),
        ({"model": "echo", "input": "hi", "previous_response_id": "resp_1"},
         "previous_response_id", "unsupported_parameter"),
        ({"model": "echo", "input": "hi", "background": True}, "background",
         "unsupported_parameter"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("stream", [True, False])
def test_bad_requests_are_400s_naming_the_param(
    fast_url: str, body: dict[str, Any], param: str, code: str, stream: bool
) -> None:
    if stream and "stream" not in body:
        body = {**body, "stream": True}
    response = httpx.post(f"{fast_url}/v1/responses", json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert error["message"]


def test_openai_python_sees_the_400(fast_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(fast_url).responses.create(
            model="echo", input="hi", previous_response_id="resp_1", stream=True
        )
    assert caught.value.param == "previous_response_id"
    assert "input" in caught.value.message  # it says what to send instead
    with pytest.raises(openai.NotFoundError):
        client(fast_url).responses.create(model="nope", input="hi")


def test_upstream_failure_before_the_stream_is_an_http_error() -> None:
    with serve_fake(Faults(status(500), name="a")) as fake, run_server(
        create_app(Settings(
            upstreams={"a": {"type": "openai", "base_url": fake.url}},
            models={"m": {"upstream": "a"}}, routing={"retries": 0},
        ))
    ) as url:  # fmt: skip
        with pytest.raises(openai.InternalServerError) as caught:
            list(client(url).responses.create(model="m", input="hi", stream=True))
        raw = httpx.post(f"{url}/v1/responses", json={"model": "m", "input": "hi", "stream": True})
    assert caught.value.status_code == 500
    assert raw.status_code == 500 and raw.json()["error"]["message"] == "a says 500"


async def cut_after_two(request: Recorded, reply: Reply) -> None:
    await reply.start()
    for event in (
        chat_chunk({"role": "assistant"}),
        chat_chunk({"content": "Hel"}),
        chat_chunk({"content": "lo"}),
    ):
        await reply.send(event)
    await asyncio.sleep(0.05)
    reply.reset()


def test_upstream_failure_after_the_commit_is_response_failed() -> None:
    with proxy_for(cut_after_two) as (url, _):
        events = list(client(url).responses.create(model="m", input="hi", stream=True))
        _, raw = post_stream(url, {"model": "m", "input": "hi"})
    kinds = [e.type for e in events]
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "server_error" and "connection" in failed.error.message
    [message] = failed.output  # closed as incomplete, with what had arrived
    assert message.status == "incomplete" and message.content[0].text == "Hello"
    assert kinds[-2] == "response.output_item.done"
    assert [kind for kind, _ in raw] == kinds


async def silent_then_cut(request: Recorded, reply: Reply) -> None:
    await reply.start()
    await reply.send(chat_chunk({"role": "assistant"}))
    await asyncio.sleep(0.7)  # past keepalive_seconds: a ping sends the headers
    reply.reset()


def test_failure_after_a_ping_but_before_the_commit_is_an_error_event() -> None:
    with proxy_for(silent_then_cut, keepalive_seconds=0.2, routing={"retries": 0}) as (url, _):
        response = httpx.post(f"{url}/v1/responses", json={"model": "m", "input": "hi",
                                                          "stream": True})  # fmt: skip
        with pytest.raises(openai.APIError) as caught:
            list(client(url).responses.create(model="m", input="hi", stream=True))
    assert response.status_code == 200 and response.text.startswith(": ping\n\n")
    [(kind, event)] = frames(response.text)  # response.created was held back: never sent
    assert kind == "error" and event["sequence_number"] == 0
    assert event["code"] == "upstream_connection_error" == event["error"]["code"]
    assert event["message"] == event["error"]["message"]
    assert "upstream" in caught.value.message


# --- routing ------------------------------------------------------------------------------------


def test_a_fallback_answers_a_responses_request() -> None:
    down = Faults(status(503))
    with serve_fake(down) as fake:
        settings = Settings(
            upstreams={"a": {"type": "openai", "base_url": fake.url},
                       "echo": {"type": "echo", "delay_ms": 0}},
            models={"m": {"upstream": "a", "fallbacks": ["echo"]}, "echo": {"upstream": "echo"}},
            routing={"retries": 1, "backoff_seconds": 0.01},
        )  # fmt: skip
        with run_server(create_app(settings)) as url:
            response, events = post_stream(url, {"model": "m", "input": "still here"})
    assert len(down.attempts) == 2
    assert response.headers["x-proxy-model"] == "echo"
    assert response.headers["x-proxy-attempts"] == "3"
    models = {p["response"]["model"] for _, p in events if "response" in p}
    assert models == {"echo"}
    assert events[-1][1]["response"]["output"][0]["content"][0]["text"] == "still here"
    check_numbered(events)


def test_a_chat_upstream_retried_before_the_commit_is_invisible() -> None:
    flaky = Faults(status(502), ok(), name="a")
    with serve_fake(flaky) as fake:
        settings = Settings(
            upstreams={"a": {"type": "openai", "base_url": fake.url}},
            models={"m": {"upstream": "a"}},
            routing={"backoff_seconds": 0.01},
        )
        with run_server(create_app(settings)) as url:
            response, events = post_stream(url, {"model": "m", "input": "hi"})
    assert len(flaky.attempts) == 2 and response.headers["x-proxy-attempts"] == "2"
    assert [kind for kind, _ in events].count("response.created") == 1
    check_numbered(events)
    assert events[-1][1]["response"]["output"][0]["content"][0]["text"] == "ok from a"


# --- streaming guarantees ------------------------------------------------------------------------


def slow_chat(request: Recorded, reply: Reply) -> Any:
    async def run() -> None:
        await reply.start()
        await reply.send(chat_chunk({"role": "assistant"}))
        for i in range(200):
            await reply.send(chat_chunk({"content": f"w{i} "}))
            if reply.peer_closed.is_set():
                return
            await asyncio.sleep(0.05)

    return run()


def test_client_disconnect_closes_the_upstream_within_1s() -> None:
    with proxy_for(slow_chat) as (url, fake):
        with requests.post(
            f"{url}/v1/responses",
            json={"model": "m", "input": "hi", "stream": True},
            stream=True,
            timeout=30,
        ) as r:
            deltas = (line for line in r.iter_lines() if b"output_text.delta" in line)
            for _ in range(3):
                next(deltas)
            left = time.monotonic()
        while not fake.closed_at and time.monotonic() < left + 5:
            time.sleep(0.01)
        assert fake.closed_at, "the proxy kept the upstream request open"
        assert fake.closed_at[0] - left < 1.0


def delta_times(url: str) -> tuple[float, list[float], str]:
    started = time.monotonic()
    times, text = [], ""
    for event in client(url).responses.create(model="echo", input=TEXT, stream=True):
        if event.type == "response.output_text.delta":
            times.append(time.monotonic())
            text += event.delta
    return started, times, text


def test_responses_stream_is_live(echo_url: str) -> None:
    started, times, text = delta_times(echo_url)
    assert text == TEXT
    assert_true_streaming(times, started, DELAY)


def test_negative_control_a_buffering_hop_fails_the_same_check() -> None:
    app = BufferingWrapper(create_app(echo_settings(echo={"delay_ms": DELAY * 1000})))
    with run_server(app) as url:
        started, times, text = delta_times(url)
    assert text == TEXT
    with pytest.raises(AssertionError, match="buffered"):
        assert_true_streaming(times, started, DELAY)
