"""``POST /v1/messages`` translated to chat completions, over a real socket, through Anthropic's
own Python SDK: messages.create, messages.stream() (text and event iterators,
get_final_message), a tool-use round trip, thinking blocks, errors as the SDK's exception
classes, count_tokens; and the raw SSE frames, pings, routing (a fallback, a retry after
message_start went out), the access line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message

from proxy import Settings, create_app
from proxy.formats.anthropic import THINKING_SIGNATURE, count_tokens
from tests.anthropic_fakes import (
    USER,
    WEATHER,
    ChatScript,
    frames,
    names,
    sdk,
    text_stream,
    tool_call_stream,
)
from tests.fake_upstream import serve_fake
from tests.fault_upstream import Faults, cut, late, ok, status
from tests.helpers import echo_settings, proxy_for, run_server

HELLO = [{"role": "user", "content": "hello there world"}]


def post(url: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/messages", json=body, headers=headers, timeout=30)


def answer(
    client: anthropic.Anthropic, stream: bool, texts: list[str] | None = None, model: str = "m"
) -> Message:
    """``HELLO`` answered by ``model``, streamed (the text pieces into ``texts``) or not."""
    if not stream:
        return client.messages.create(model=model, max_tokens=64, messages=HELLO)
    with client.messages.stream(model=model, max_tokens=64, messages=HELLO) as s:
        if texts is not None:
            texts.extend(s.text_stream)
        return s.get_final_message()


# --- messages.create and messages.stream ---------------------------------------------------


def test_create_answers_one_message(fast_url: str) -> None:
    with sdk(fast_url) as client:
        message = client.messages.create(model="echo", max_tokens=64, messages=HELLO)
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == "echo"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "hello there world"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 3)  # echo's counts


def test_stream_text_iterator_and_final_message(fast_url: str) -> None:
    with (
        sdk(fast_url) as client,
        client.messages.stream(model="echo", max_tokens=64, messages=HELLO) as stream,
    ):
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == ["hello", " there", " world"]
    assert final.content[0].text == "hello there world"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.model == "echo"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 3)


def test_stream_event_iterator(fast_url: str) -> None:
    with (
        sdk(fast_url) as client,
        client.messages.stream(model="echo", max_tokens=64, messages=HELLO) as stream,
    ):
        events = [event.type for event in stream]
    raw = [event for event in events if event != "text"]  # the SDK adds a "text" per delta
    assert raw == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events.count("text") == 3


def test_create_stream_true_yields_raw_events(fast_url: str) -> None:
    with sdk(fast_url) as client:
        events = list(
            client.messages.create(model="echo", max_tokens=64, messages=HELLO, stream=True)
        )
    assert events[0].type == "message_start" and events[0].message.content == []  # type: ignore[union-attr]
    deltas = [e.delta.text for e in events if e.type == "content_block_delta"]  # type: ignore[union-attr]
    assert deltas == ["hello", " there", " world"]
    assert events[-2].type == "message_delta" and events[-2].delta.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert events[-1].type == "message_stop"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "create"])
def test_max_tokens_stops_with_max_tokens(fast_url: str, stream: bool) -> None:
    with sdk(fast_url) as client:
        if stream:
            with client.messages.stream(model="echo", max_tokens=2, messages=HELLO) as s:
                message = s.get_final_message()
        else:
            message = client.messages.create(model="echo", max_tokens=2, messages=HELLO)
    assert message.content[0].text == "hello there"  # type: ignore[union-attr]
    assert message.stop_reason == "max_tokens"


# --- tools and thinking through a chat upstream --------------------------------------------


def test_tool_use_round_trip() -> None:
    """The model calls a tool (streamed in fragments); the client runs it and sends the
    result back; the chat upstream gets both turns in chat's shape."""
    answer = text_stream("It is 18°C and sunny in Paris.")
    upstream = ChatScript([tool_call_stream(), answer])
    with proxy_for(upstream) as (url, _), sdk(url) as client:
        with client.messages.stream(
            model="m", max_tokens=256, tools=[WEATHER], messages=[USER]
        ) as s:
            events = list(s)
            first = s.get_final_message()
        tool = first.content[1]
        assert tool.type == "tool_use"
        result = {"type": "tool_result", "tool_use_id": tool.id, "content": "18°C, sunny"}
        history = [
            USER,
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [result]},
        ]
        second = client.messages.create(
            model="m", max_tokens=256, tools=[WEATHER], messages=history
        )
    print("\nthe SDK's events, as iterated:\n" + "\n".join(repr(event) for event in events))
    assert [block.type for block in first.content] == ["text", "tool_use"]
    assert (tool.id, tool.name, tool.input) == ("call_1", "get_weather", {"city": "Paris"})
    assert first.stop_reason == "tool_use"
    assert (first.usage.input_tokens, first.usage.output_tokens) == (31, 12)
    partial = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]  # type: ignore[union-attr]
    assert "".join(partial) == '{"city": "Paris"}' and all(partial)
    assert second.content[0].text == "It is 18°C and sunny in Paris."  # type: ignore[union-attr]
    asked = upstream.bodies()
    assert asked[0]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": WEATHER["description"],
            },
        }
    ]
    assert asked[0]["stream"] is True and asked[0]["stream_options"] == {"include_usage": True}
    assert asked[1]["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18°C, sunny"},
    ]
    assert "stream" not in asked[1]  # create() without stream: a non-stream chat request


THINKING = {"type": "enabled", "budget_tokens": 2048}


@pytest.mark.parametrize(
    ("style", "switch"),
    [
        ("reasoning_effort", {"reasoning_effort": "low"}),
        ("chat_template_kwargs", {"chat_template_kwargs": {"enable_thinking": True}}),
        ("none", {}),
    ],
)
def test_thinking_blocks_from_reasoning_content(style: str, switch: dict[str, Any]) -> None:
    upstream = ChatScript([text_stream("Paris.", reasoning=("The capital", " of France..."))])
    with (
        proxy_for(upstream, up={"thinking": style}) as (url, _),
        sdk(url) as client,
        client.messages.stream(model="m", max_tokens=4096, thinking=THINKING, messages=[USER]) as s,
    ):
        events = list(s)
        message = s.get_final_message()
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "The capital of France..."
    assert thinking.signature == THINKING_SIGNATURE
    assert text.type == "text" and text.text == "Paris."
    kinds = [e.delta.type for e in events if e.type == "content_block_delta"]  # type: ignore[union-attr]
    assert kinds == ["thinking_delta", "thinking_delta", "signature_delta", "text_delta"]
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]  # type: ignore[union-attr]
    assert starts == ["thinking", "text"]  # thinking in its own block, never in the text
    asked = upstream.bodies()[0]
    assert {
        k: asked[k] for k in ("reasoning_effort", "chat_template_kwargs") if k in asked
    } == switch


def test_thinking_block_in_a_non_stream_answer() -> None:
    completion = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paris.", "reasoning_content": "Hmm."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    with proxy_for(ChatScript([completion])) as (url, _), sdk(url) as client:
        message = client.messages.create(
            model="m", max_tokens=64, thinking=THINKING, messages=[USER]
        )
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Hmm."  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 3)


# --- errors as the SDK's exception classes --------------------------------------------------


def test_bad_request_is_a_400_in_anthropic_shape(fast_url: str) -> None:
    with sdk(fast_url) as client, pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="echo", max_tokens=64, messages=[])
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "Invalid value for 'messages': it must contain at least one message.",
        },
    }


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": "echo", "messages": HELLO}, "max_tokens"),
        ({"model": "echo", "max_tokens": 0, "messages": HELLO}, "max_tokens"),
        ({"max_tokens": 5, "messages": HELLO}, "model"),
        ({"model": "echo", "max_tokens": 5, "messages": HELLO, "stream": "yes"}, "stream"),
        (
            {
                "model": "echo",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}],
            },
            "messages[0].content[0].type",
        ),
        (
            {
                "model": "echo",
                "max_tokens": 5,
                "messages": HELLO,
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "tools[0].type",
        ),
    ],
)
def test_what_cannot_be_served_is_refused_before_any_upstream(
    fast_url: str, body: dict[str, Any], words: str
) -> None:
    response = post(fast_url, body)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert words in error["error"]["message"]


def test_every_error_of_this_endpoint_is_in_anthropic_shape(fast_url: str) -> None:
    not_json = httpx.post(f"{fast_url}/v1/messages", content=b"{", timeout=10)
    wrong_method = httpx.get(f"{fast_url}/v1/messages", timeout=10)
    for response, code in ((not_json, 400), (wrong_method, 405)):
        assert response.status_code == code
        assert response.json()["type"] == "error"
        assert set(response.json()["error"]) == {"type", "message"}
    chat = httpx.get(f"{fast_url}/v1/chat/completions", timeout=10)
    assert chat.status_code == 405 and "code" in chat.json()["error"]  # chat keeps its own


def test_unknown_model_is_not_found(fast_url: str) -> None:
    with sdk(fast_url) as client, pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="claude-nope", max_tokens=64, messages=HELLO)
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_wrong_key_is_an_authentication_error() -> None:
    with run_server(create_app(echo_settings(api_keys=["sk-proxy-1"]))) as url:
        with (
            sdk(url, api_key=None, auth_token="sk-wrong") as client,
            pytest.raises(anthropic.AuthenticationError) as caught,
        ):
            client.messages.create(model="echo", max_tokens=64, messages=HELLO)
        with sdk(url, api_key=None, auth_token="sk-proxy-1") as client:
            answer = client.messages.create(model="echo", max_tokens=64, messages=HELLO)
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert answer.content[0].text == "hello there world"  # type: ignore[union-attr]


def test_x_api_key_is_accepted_as_the_proxy_key() -> None:
    with run_server(create_app(echo_settings(api_keys=["sk-proxy-1"]))) as url:
        with sdk(url, api_key="sk-proxy-1") as client:  # the SDK sends it as x-api-key
            answer = client.messages.create(model="echo", max_tokens=64, messages=HELLO)
        with sdk(url, api_key="sk-wrong") as client, pytest.raises(anthropic.AuthenticationError):
            client.messages.create(model="echo", max_tokens=64, messages=HELLO)
    assert answer.content[0].text == "hello there world"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("code", "exception", "kind"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
        (503, anthropic.InternalServerError, "overloaded_error"),
        (500, anthropic.InternalServerError, "api_error"),
    ],
)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "create"])
def test_upstream_status_is_the_sdks_exception(
    code: int, exception: type[Exception], kind: str, stream: bool
) -> None:
    with (
        proxy_for(Faults(status(code)), routing={"retries": 0}) as (url, _),
        sdk(url) as client,
        pytest.raises(exception) as caught,
    ):
        answer(client, stream)
    assert caught.value.status_code == code  # type: ignore[attr-defined]
    assert caught.value.body["error"]["type"] == kind  # type: ignore[attr-defined]


def test_failure_mid_stream_raises_in_the_sdk() -> None:
    texts: list[str] = []
    with (
        proxy_for(Faults(cut(3))) as (url, _),
        sdk(url) as client,
        pytest.raises(anthropic.APIStatusError) as caught,
    ):
        answer(client, True, texts)
    assert texts == ["t0 ", "t1 ", "t2 "]  # what arrived stays arrived
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "upstream" in caught.value.body["error"]["message"]  # type: ignore[index]


# --- the wire ------------------------------------------------------------------------------


def test_wire_frames_are_anthropics(fast_url: str) -> None:
    response = post(
        fast_url, {"model": "echo", "max_tokens": 64, "messages": HELLO, "stream": True}
    )
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert (
        response.headers["x-accel-buffering"] == "no"
        and response.headers["cache-control"] == "no-cache"
    )
    wire = response.content
    assert b"\r" not in wire and b"[DONE]" not in wire and b"\n: " not in wire
    events = frames(wire)  # nothing but "event: <type>\ndata: <json>\n\n", named as the type
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["model"] == "echo"
    assert start["usage"] == {
        "input_tokens": count_tokens({"messages": HELLO}),  # the estimate, at once
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 0,
    }
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert all(
        data["delta"]["text"] for name, data in events if name == "content_block_delta"
    )  # no empty delta
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 3, "output_tokens": 3},
    }
    assert events[-1][1] == {"type": "message_stop"}


def test_pings_while_the_upstream_is_silent() -> None:
    upstream = ChatScript([text_stream("late", " answer")], first_delay=1.0)
    with proxy_for(upstream, keepalive_seconds=0.3) as (url, _):
        wire = post(
            url, {"model": "m", "max_tokens": 64, "messages": HELLO, "stream": True}
        ).content
        with (
            sdk(url) as client,
            client.messages.stream(model="m", max_tokens=64, messages=HELLO) as s,
        ):
            text = s.get_final_text()
    assert b'\n\nevent: ping\ndata: {"type": "ping"}\n\n' in wire  # Anthropic's own bytes
    kinds = names(wire)
    assert kinds[0] == "message_start" and kinds[1] == "ping" and kinds.count("ping") >= 2
    assert "ping" not in kinds[kinds.index("content_block_start") :]  # only while silent
    assert text == "late answer"  # the SDK skips them


def test_count_tokens_estimates_for_a_chat_upstream(fast_url: str) -> None:
    body = {"model": "echo", "messages": HELLO, "system": "Be brief.", "tools": [WEATHER]}
    with sdk(fast_url) as client:
        counted = client.messages.count_tokens(**body)  # type: ignore[arg-type]
    assert counted.input_tokens == count_tokens(body) > 0
    assert counted.model_extra == {"estimated": True}
    missing = httpx.post(f"{fast_url}/v1/messages/count_tokens", json={"model": "echo"}, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "invalid_request_error"


# --- routing -------------------------------------------------------------------------------


@contextmanager
def routed(
    primary: Faults, fallback: Faults, timeouts: dict[str, float] | None = None
) -> Iterator[str]:
    """A proxy whose model ``m`` (upstream a) falls back to ``f`` (upstream b), no retries."""
    primary.name, fallback.name = "a", "b"
    with ExitStack() as stack:
        upstreams = {
            name: {
                "type": "openai",
                "base_url": stack.enter_context(serve_fake(faults)).url,
                "timeouts": timeouts or {},
            }
            for name, faults in (("a", primary), ("b", fallback))
        }
        models = {"m": {"upstream": "a", "fallbacks": ["f"]}, "f": {"upstream": "b"}}
        routing = {"retries": 0, "backoff_seconds": 0.05}
        config = Settings(upstreams=upstreams, models=models, routing=routing)
        yield stack.enter_context(run_server(create_app(config)))


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "create"])
def test_a_fallback_answers_a_messages_request(stream: bool) -> None:
    with routed(Faults(status(503)), Faults(ok())) as url, sdk(url) as client:
        message = answer(client, stream)
    assert message.content[0].text == "ok from b"  # type: ignore[union-attr]
    assert message.model == "f"  # the public name of the model that answered


def test_a_retry_after_message_start_never_opens_the_message_twice() -> None:
    """The first attempt answered (message_start went out at once), then sent no content
    within first_token; the fallback answers in the same message."""
    with routed(Faults(late(3)), Faults(ok()), {"first_token": 0.5}) as url:
        wire = post(
            url, {"model": "m", "max_tokens": 64, "messages": HELLO, "stream": True}
        ).content
    events = frames(wire)
    kinds = [name for name, _ in events]
    assert kinds.count("message_start") == 1 and kinds[0] == "message_start"
    assert kinds[-1] == "message_stop" and kinds.count("content_block_start") == 1
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text == "ok from b"
    assert events[0][1]["message"]["model"] == "m"  # it went out before the fallback was known


def test_no_answer_after_message_start_is_an_error_event() -> None:
    with proxy_for(
        Faults(late(3)), up={"timeouts": {"first_token": 0.4}}, routing={"retries": 0}
    ) as (url, _):
        wire = post(
            url, {"model": "m", "max_tokens": 64, "messages": HELLO, "stream": True}
        ).content
        with sdk(url) as client, pytest.raises(anthropic.APIStatusError) as caught:
            answer(client, True)
    events = frames(wire)
    assert [name for name, _ in events] == ["message_start", "error"]  # no message_stop
    assert events[1][1]["error"]["type"] == "timeout_error"
    assert caught.value.body["error"]["type"] == "timeout_error"  # type: ignore[index]


def test_access_line_and_tokens(caplog: pytest.LogCaptureFixture, fast_url: str) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    with sdk(fast_url) as client:
        client.messages.create(model="echo", max_tokens=64, messages=HELLO)
        with client.messages.stream(model="echo", max_tokens=64, messages=HELLO) as s:
            s.get_final_message()
    lines = [r.fields for r in caplog.records if r.name == "proxy.access"]  # type: ignore[attr-defined]
    assert [(line["path"], line["stream"], line["outcome"]) for line in lines] == [
        ("/v1/messages", False, "complete"),
        ("/v1/messages", True, "complete"),
    ]
    assert all(
        (line["model"], line["prompt_tokens"], line["completion_tokens"]) == ("echo", 3, 3)
        for line in lines
    )
    assert lines[1]["ttft_ms"] is not None  # the first content, not message_start


def test_both_endpoints_are_documented(fast_url: str) -> None:
    schema = httpx.get(f"{fast_url}/openapi.json", timeout=10).json()
    for path, model in (
        ("/v1/messages", "MessagesRequest"),
        ("/v1/messages/count_tokens", "CountTokensRequest"),
    ):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": f"#/components/schemas/{model}"}
    assert "max_tokens" in schema["components"]["schemas"]["MessagesRequest"]["required"]


def test_a_claude_code_shaped_request() -> None:
    """What Claude Code sends (``?beta=true``, system blocks with cache_control, a system
    message inside ``messages``, betas, metadata) reaches a chat upstream as chat wants it:
    one leading system message, roles alternating, nothing Anthropic-only."""
    body = {
        "model": "m",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {
                "type": "text",
                "text": "You are Claude Code.",
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": "Be concise."},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "fix the bug", "cache_control": {"type": "ephemeral"}}
                ],
            },
            {"role": "system", "content": "The user is in /repo."},
        ],
        "tools": [{**WEATHER, "cache_control": {"type": "ephemeral"}}],
        "metadata": {"user_id": "user_abc"},
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": []},
    }
    upstream = ChatScript([text_stream("Done.")])
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"}
    with proxy_for(upstream) as (url, _):
        response = httpx.post(
            f"{url}/v1/messages?beta=true", json=body, headers=headers, timeout=30
        )
    assert names(response.content)[-1] == "message_stop"
    asked = upstream.bodies()[0]
    assert asked["messages"] == [
        {
            "role": "system",
            "content": "You are Claude Code.\n\nBe concise.\n\nThe user is in /repo.",
        },
        {"role": "user", "content": "fix the bug"},
    ]
    assert asked["user"] == "user_abc" and asked["max_tokens"] == 32000
    assert not {"context_management", "metadata", "thinking", "system"} & set(asked)
    assert "cache_control" not in json.dumps(asked)
    assert not {"anthropic-version", "anthropic-beta"} & set(upstream.requests[0].headers)
