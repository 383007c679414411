"""``POST /v1/messages`` passed through to an upstream that speaks Messages itself (``apis:
[messages]``), over real sockets, through Anthropic's SDK: event by event, model names mapped
both ways, the ``anthropic-*`` headers forwarded and the client's key never, the upstream's
key as configured; errors before the first content retried, after it passed on;
count_tokens from the upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import httpx
import pytest

from proxy import Settings, create_app
from proxy.formats.anthropic import THINKING_SIGNATURE, count_tokens
from tests.anthropic_fakes import (
    NativeScript,
    frames,
    native_events,
    native_message,
    sdk,
)
from tests.fake_upstream import Recorded, Reply, serve_fake
from tests.helpers import proxy_for, run_server

HI = [{"role": "user", "content": "Say hello in French."}]
NATIVE = {"apis": ["messages"], "api_key_header": "x-api-key"}
BETA = "interleaved-thinking-2025-05-14"


@contextmanager
def native_proxy(script: NativeScript, **settings: Any) -> Iterator[str]:
    """The proxy's model ``m`` -> ``up-model`` on a Messages server with the key ``up-key``."""
    up = {**NATIVE, **settings.pop("up", {})}
    with proxy_for(script, key="up-key", model="up-model", up=up, **settings) as (url, _):
        yield url


def stream_hi(client: anthropic.Anthropic, **options: Any) -> anthropic.types.Message:
    with client.messages.stream(model="m", max_tokens=64, messages=HI, **options) as stream:
        return stream.get_final_message()


def test_stream_is_passed_through_with_headers_and_models_mapped() -> None:
    upstream = NativeScript()
    with native_proxy(upstream) as url, sdk(url, api_key="client-key") as client:
        message = stream_hi(
            client, extra_headers={"anthropic-version": "2099-01-01", "anthropic-beta": BETA}
        )
    assert message.content[0].text == "Bonjour!"  # type: ignore[union-attr]
    assert message.model == "m" and message.id == "msg_up"
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (21, 5, 7)
    asked = upstream.requests[0]
    assert asked.path == "/v1/messages"
    assert asked.json()["model"] == "up-model" and asked.json()["stream"] is True
    assert asked.json()["messages"] == HI
    assert asked.headers["anthropic-version"] == "2099-01-01"  # the client's, forwarded
    assert asked.headers["anthropic-beta"] == BETA
    assert asked.headers["x-api-key"] == "up-key"  # the upstream's key, as configured
    assert "authorization" not in asked.headers
    assert "client-key" not in json.dumps(asked.headers)  # the client's key stays here


def test_wire_is_the_upstreams_events_but_pings_and_model() -> None:
    with native_proxy(NativeScript()) as url:
        body = {"model": "m", "max_tokens": 64, "messages": HI, "stream": True}
        wire = httpx.post(f"{url}/v1/messages", json=body, timeout=30).content
    expected = [event for event in native_events() if event["type"] != "ping"]
    expected[0]["message"]["model"] = "m"
    assert frames(wire) == [(event["type"], event) for event in expected]


def test_a_request_without_a_version_gets_the_first_one() -> None:
    upstream = NativeScript([native_message()])
    with native_proxy(upstream) as url:
        body = {"model": "m", "max_tokens": 64, "messages": HI}
        response = httpx.post(f"{url}/v1/messages", json=body, timeout=30)
    assert response.json()["content"] == native_message()["content"]
    assert upstream.requests[0].headers["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in upstream.requests[0].headers


def test_key_goes_as_bearer_by_default() -> None:
    upstream = NativeScript([native_message()])
    with native_proxy(upstream, up={"api_key_header": "authorization"}) as url, sdk(url) as client:
        client.messages.create(model="m", max_tokens=64, messages=HI)
    assert upstream.requests[0].headers["authorization"] == "Bearer up-key"
    assert "x-api-key" not in upstream.requests[0].headers


def test_non_stream_is_passed_through() -> None:
    upstream = NativeScript([native_message("Salut !")])
    with native_proxy(upstream) as url, sdk(url) as client:
        message = client.messages.create(model="m", max_tokens=64, messages=HI)
    assert message.content[0].text == "Salut !"  # type: ignore[union-attr]
    assert message.model == "m" and message.usage.output_tokens == 7
    assert "stream" not in upstream.requests[0].json()


def test_a_json_answer_to_a_stream_request_is_streamed() -> None:
    with (
        native_proxy(NativeScript([native_message("Salut !")])) as url,
        sdk(url) as client,
        client.messages.stream(model="m", max_tokens=64, messages=HI) as stream,
    ):
        texts = list(stream.text_stream)
        message = stream.get_final_message()
    assert texts == ["Salut !"] and message.stop_reason == "end_turn" and message.model == "m"


def test_a_streamed_answer_to_a_non_stream_request_is_merged() -> None:
    upstream = NativeScript([native_events("Bonjour tout le monde")])
    with native_proxy(upstream, route={"force_stream": True}) as url, sdk(url) as client:
        message = client.messages.create(model="m", max_tokens=64, messages=HI)
    assert message.content[0].text == "Bonjour tout le monde"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.model == "m"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (21, 7)
    asked = upstream.requests[0].json()
    assert asked["stream"] is True and "stream_options" not in asked  # not Anthropic's


def test_thinking_blocks_this_proxy_made_up_are_not_forwarded() -> None:
    ours = {"type": "thinking", "thinking": "from a chat upstream", "signature": THINKING_SIGNATURE}
    real = {"type": "thinking", "thinking": "from Anthropic", "signature": "EqQBCkYIBxgC"}
    history = [
        *HI,
        {"role": "assistant", "content": [ours, {"type": "text", "text": "Bonjour!"}]},
        {"role": "user", "content": "Again?"},
        {"role": "assistant", "content": [real, {"type": "text", "text": "Bonjour!"}]},
        {"role": "user", "content": "Once more."},
    ]
    upstream = NativeScript([native_message()])
    with native_proxy(upstream) as url, sdk(url) as client:
        client.messages.create(model="m", max_tokens=64, messages=history)  # type: ignore[arg-type]
    forwarded = upstream.requests[0].json()["messages"]
    assert forwarded[1]["content"] == [{"type": "text", "text": "Bonjour!"}]
    assert forwarded[3]["content"][0] == real


def test_what_only_a_messages_server_can_serve_reaches_it() -> None:
    document = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "Hi"},
    }
    upstream = NativeScript([native_message()])
    with native_proxy(upstream) as url, sdk(url) as client:
        message = client.messages.create(
            model="m", max_tokens=64, messages=[{"role": "user", "content": [document]}]
        )
    assert message.content[0].text == "Bonjour!"  # type: ignore[union-attr]
    assert upstream.requests[0].json()["messages"][0]["content"] == [document]


# --- failures -------------------------------------------------------------------------------


def error_event(kind: str = "overloaded_error", message: str = "Overloaded") -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def test_an_error_event_before_content_is_retried() -> None:
    failing = [native_events()[0], error_event()]
    upstream = NativeScript([failing, native_events()])
    routing = {"retries": 1, "backoff_seconds": 0.05}
    with native_proxy(upstream, routing=routing) as url:
        body = {"model": "m", "max_tokens": 64, "messages": HI, "stream": True}
        wire = httpx.post(f"{url}/v1/messages", json=body, timeout=30).content
    kinds = [name for name, _ in frames(wire)]
    assert len(upstream.requests) == 2
    assert kinds.count("message_start") == 1 and kinds[-1] == "message_stop"
    assert "error" not in kinds


def test_an_error_event_after_content_ends_the_stream_with_its_type() -> None:
    events = native_events("Bon jour")
    upstream = NativeScript([[*events[:4], error_event()]])
    with native_proxy(upstream, routing={"retries": 0}) as url:
        body = {"model": "m", "max_tokens": 64, "messages": HI, "stream": True}
        wire = httpx.post(f"{url}/v1/messages", json=body, timeout=30).content
        with sdk(url) as client, pytest.raises(anthropic.APIStatusError) as caught:
            stream_hi(client)
    last = frames(wire)[-1]
    assert last == (
        "error",
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert len(upstream.requests) == 2  # one each: nothing is retried after the content


def test_a_stream_without_message_stop_is_truncated() -> None:
    upstream = NativeScript([native_events()[:-1]])
    with (
        native_proxy(upstream, routing={"retries": 0}) as url,
        sdk(url) as client,
        pytest.raises(anthropic.APIStatusError) as caught,
    ):
        stream_hi(client)
    assert "message_stop" in caught.value.body["error"]["message"]  # type: ignore[index]


def test_upstream_529_is_the_sdks_overloaded_error() -> None:
    async def overloaded(request: Recorded, reply: Reply) -> None:
        await reply.json(529, error_event(message="Overloaded, try later"))

    with (
        proxy_for(overloaded, up=NATIVE, routing={"retries": 0}) as (url, _),
        sdk(url) as client,
        pytest.raises(anthropic.OverloadedError) as caught,
    ):
        client.messages.create(model="m", max_tokens=64, messages=HI)
    assert caught.value.body == error_event(message="Overloaded, try later")


def test_a_translated_fallback_answers_for_a_failing_messages_server() -> None:
    async def down(request: Recorded, reply: Reply) -> None:
        await reply.json(503, error_event("overloaded_error", "down"))

    with serve_fake(down) as fake:
        config = Settings(
            upstreams={
                "native": {"type": "openai", "base_url": fake.url, **NATIVE},
                "echo": {"type": "echo", "delay_ms": 0},
            },
            models={
                "m": {"upstream": "native", "fallbacks": ["echo"]},
                "echo": {"upstream": "echo"},
            },
            routing={"retries": 0},
        )
        with run_server(create_app(config)) as url, sdk(url) as client:
            message = stream_hi(client)
    assert message.content[0].text == "Say hello in French."  # type: ignore[union-attr]
    assert message.model == "echo" and len(fake.requests) == 1


# --- count_tokens ---------------------------------------------------------------------------


def test_count_tokens_comes_from_the_messages_server() -> None:
    upstream = NativeScript(count=42)
    with native_proxy(upstream) as url, sdk(url, api_key="client-key") as client:
        counted = client.messages.count_tokens(
            model="m", messages=HI, extra_headers={"anthropic-beta": BETA}
        )
    assert counted.input_tokens == 42 and not counted.model_extra
    asked = upstream.requests[0]
    assert asked.path == "/v1/messages/count_tokens" and asked.json()["model"] == "up-model"
    assert asked.headers["anthropic-beta"] == BETA and asked.headers["x-api-key"] == "up-key"


def test_count_tokens_estimates_when_the_server_cannot_count() -> None:
    upstream = NativeScript(count_status=404)
    with native_proxy(upstream) as url, sdk(url) as client:
        counted = client.messages.count_tokens(model="m", messages=HI)
    assert counted.input_tokens == count_tokens({"messages": HI})
    assert counted.model_extra == {"estimated": True}
    assert len(upstream.requests) == 1  # a 404 is not retried


def test_pings_from_the_upstream_are_not_forwarded_but_ours_are() -> None:
    events = native_events()
    slow = NativeScript([events], first_delay=1.0)
    with native_proxy(slow, keepalive_seconds=0.3) as url:
        body = {"model": "m", "max_tokens": 64, "messages": HI, "stream": True}
        wire = httpx.post(f"{url}/v1/messages", json=body, timeout=30).content
    kinds = [name for name, _ in frames(wire)]
    assert kinds[0] == "message_start" and kinds[1] == "ping"  # ours, during the silence
    assert kinds.count("ping") >= 2
    assert events[2]["type"] == "ping"  # the upstream's, after its content_block_start: dropped
    assert "ping" not in kinds[kinds.index("content_block_start") :]
