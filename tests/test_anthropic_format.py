"""Anthropic Messages <-> chat completions translation: tables of pure cases."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.errors import (
    InvalidRequest,
    PayloadTooLarge,
    ProxyError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from proxy.formats.anthropic import count_tokens, error_body, messages_to_chat

Body = dict[str, Any]
USER = {"role": "user", "content": "Hi"}


def req(**fields: Any) -> Body:
    """A minimal valid Anthropic request with ``fields`` on top."""
    return {"model": "m", "max_tokens": 64, "messages": [USER], **fields}


def chat(*messages: Body, **fields: Any) -> Body:
    """The chat request ``req(...)`` is expected to become."""
    return {"model": "m", "messages": list(messages) or [USER], "max_tokens": 64, **fields}


# -- request translation --------------------------------------------------------------------

IMAGE_B64 = {
    "type": "image",
    "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"},
}
IMAGE_URL = {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
TOOL = {
    "name": "get_weather",
    "description": "Weather.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CHAT_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": TOOL["input_schema"],
        "description": "Weather.",
    },
}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
CALL = {
    "id": "toolu_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}

REQUESTS = [
    # (name, Anthropic request, chat request)
    ("minimal", req(), chat()),
    (
        "system string",
        req(system="Be brief."),
        chat({"role": "system", "content": "Be brief."}, USER),
    ),
    (
        "system blocks, cache_control ignored",
        req(
            system=[
                {"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "B"},
            ]
        ),
        chat({"role": "system", "content": "A\n\nB"}, USER),
    ),
    (
        "system role inside messages is hoisted, never forwarded in place",
        req(
            system="Top.",
            messages=[
                USER,
                {"role": "system", "content": "Agents: x"},
                {"role": "assistant", "content": "Ok"},
            ],
        ),
        chat(
            {"role": "system", "content": "Top.\n\nAgents: x"},
            USER,
            {"role": "assistant", "content": "Ok"},
        ),
    ),
    (
        "system role only inside messages",
        req(messages=[{"role": "system", "content": [{"type": "text", "text": "S"}]}, USER]),
        chat({"role": "system", "content": "S"}, USER),
    ),
    (
        "text blocks joined into one string",
        req(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}},
                    ],
                }
            ]
        ),
        chat({"role": "user", "content": "a\n\nb"}),
    ),
    (
        "images: base64 as a data URI, url as is",
        req(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Compare"}, IMAGE_B64, IMAGE_URL],
                }
            ]
        ),
        chat(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                ],
            }
        ),
    ),
    (
        "tool_use -> tool_calls; tool_result -> tool message before the turn's text",
        req(
            messages=[
                USER,
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "Let me look."}, TOOL_USE],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Thanks"},
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    ],
                },
            ]
        ),
        chat(
            USER,
            {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "user", "content": "Thanks"},
        ),
    ),
    (
        "two tool results, blocks content, an error, a tool_use without text",
        req(
            messages=[
                USER,
                {
                    "role": "assistant",
                    "content": [TOOL_USE, {**TOOL_USE, "id": "toolu_2", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [
                                {"type": "text", "text": "a"},
                                {"type": "text", "text": "b"},
                            ],
                        },
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "content": "boom",
                            "is_error": True,
                        },
                    ],
                },
            ]
        ),
        chat(
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    CALL,
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "a\n\nb"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "[tool error] boom"},
        ),
    ),
    (
        "an image in a tool result moves to the user message after it",
        req(
            messages=[
                USER,
                {"role": "assistant", "content": [TOOL_USE]},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "shot"}, IMAGE_URL],
                        }
                    ],
                },
            ]
        ),
        chat(
            USER,
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {
                "role": "tool",
                "tool_call_id": "toolu_1",
                "content": "shot\n\n[1 image(s) of this result follow in the next user message]",
            },
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}],
            },
        ),
    ),
    (
        "thinking blocks in history dropped; a thinking-only turn dropped, users merged",
        req(
            messages=[
                USER,
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "t", "signature": "s"},
                        {"type": "text", "text": "A"},
                    ],
                },
                {"role": "user", "content": "B"},
                {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]},
                {"role": "user", "content": "C"},
            ]
        ),
        chat(USER, {"role": "assistant", "content": "A"}, {"role": "user", "content": "B\n\nC"}),
    ),
    (
        "tools and tool_choice auto",
        req(tools=[TOOL], tool_choice={"type": "auto"}),
        chat(tools=[CHAT_TOOL], tool_choice="auto"),
    ),
    (
        "tool_choice any",
        req(tools=[TOOL], tool_choice={"type": "any"}),
        chat(tools=[CHAT_TOOL], tool_choice="required"),
    ),
    (
        "tool_choice none",
        req(tools=[TOOL], tool_choice={"type": "none"}),
        chat(tools=[CHAT_TOOL], tool_choice="none"),
    ),
    (
        "tool_choice tool, no parallel calls",
        req(
            tools=[TOOL],
            tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        chat(
            tools=[CHAT_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
        ),
    ),
    (
        "custom type tool, strict",
        req(tools=[{**TOOL, "type": "custom", "strict": True}]),
        chat(tools=[{"type": "function", "function": {**CHAT_TOOL["function"], "strict": True}}]),
    ),
    (
        "empty tools dropped with their tool_choice",
        req(tools=[], tool_choice={"type": "auto"}),
        chat(),
    ),
    ("stop_sequences -> stop", req(stop_sequences=["END", "##"]), chat(stop=["END", "##"])),
    (
        "sampling",
        req(temperature=0.2, top_p=0.9, top_k=40),
        chat(temperature=0.2, top_p=0.9, top_k=40),
    ),
    ("metadata.user_id -> user", req(metadata={"user_id": "u-1"}), chat(user="u-1")),
    (
        "stream asks for usage",
        req(stream=True),
        chat(stream=True, stream_options={"include_usage": True}),
    ),
    ("stream false kept", req(stream=False), chat(stream=False)),
    (
        "Anthropic-only knobs dropped, unknown fields forwarded",
        req(
            service_tier="auto",
            cache_control={"type": "ephemeral"},
            context_management={"edits": []},
            repetition_penalty=1.1,
        ),
        chat(repetition_penalty=1.1),
    ),
    (
        "output_config.format -> response_format",
        req(output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}}),
        chat(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": {"type": "object"}},
            }
        ),
    ),
]


@pytest.mark.parametrize(("name", "body", "expected"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_request_translation(name: str, body: Body, expected: Body) -> None:
    assert messages_to_chat(body) == expected


def enabled(budget: int) -> Body:
    return {"type": "enabled", "budget_tokens": budget}


THINKING = [
    # (style, extra request fields, expected extra chat fields)
    ("reasoning_effort", {"thinking": enabled(1024)}, {"reasoning_effort": "low"}),
    ("reasoning_effort", {"thinking": enabled(4096)}, {"reasoning_effort": "low"}),
    ("reasoning_effort", {"thinking": enabled(4097)}, {"reasoning_effort": "medium"}),
    ("reasoning_effort", {"thinking": enabled(10000)}, {"reasoning_effort": "medium"}),
    ("reasoning_effort", {"thinking": enabled(16384)}, {"reasoning_effort": "medium"}),
    ("reasoning_effort", {"thinking": enabled(31999)}, {"reasoning_effort": "high"}),
    ("reasoning_effort", {"thinking": {"type": "disabled"}}, {"reasoning_effort": "none"}),
    ("reasoning_effort", {"thinking": {"type": "adaptive"}}, {}),
    (
        "reasoning_effort",
        {"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}},
        {"reasoning_effort": "high"},
    ),
    (
        "reasoning_effort",
        {"thinking": enabled(31999), "output_config": {"effort": "low"}},
        {"reasoning_effort": "low"},
    ),
    (
        "reasoning_effort",
        {"thinking": enabled(2000), "reasoning_effort": "high"},
        {"reasoning_effort": "high"},
    ),
    ("reasoning_effort", {}, {}),
    (
        "chat_template_kwargs",
        {"thinking": enabled(2048)},
        {"chat_template_kwargs": {"enable_thinking": True}},
    ),
    (
        "chat_template_kwargs",
        {"thinking": {"type": "disabled"}},
        {"chat_template_kwargs": {"enable_thinking": False}},
    ),
    (
        "chat_template_kwargs",
        {"thinking": enabled(2048), "chat_template_kwargs": {"foo": 1}},
        {"chat_template_kwargs": {"foo": 1, "enable_thinking": True}},
    ),
    ("chat_template_kwargs", {}, {}),
    ("none", {"thinking": enabled(2048)}, {}),
    ("none", {"thinking": {"type": "disabled"}}, {}),
]


@pytest.mark.parametrize(("style", "fields", "expected"), THINKING)
def test_thinking_switch(style: str, fields: Body, expected: Body) -> None:
    out = messages_to_chat(req(**fields), thinking=style)
    switches = {k: out[k] for k in ("reasoning_effort", "chat_template_kwargs") if k in out}
    assert switches == expected
    assert "thinking" not in out and "output_config" not in out


BAD_REQUESTS = [
    # (name, request, param, code)
    (
        "max_tokens missing",
        {"model": "m", "messages": [USER]},
        "max_tokens",
        "missing_required_parameter",
    ),
    ("max_tokens zero", req(max_tokens=0), "max_tokens", "invalid_value"),
    ("max_tokens not an int", req(max_tokens="64"), "max_tokens", "invalid_value"),
    ("messages missing", {"model": "m", "max_tokens": 8}, "messages", "missing_required_parameter"),
    ("messages empty", req(messages=[]), "messages", "invalid_value"),
    (
        "bad role",
        req(messages=[{"role": "tool", "content": "x"}]),
        "messages[0].role",
        "invalid_value",
    ),
    (
        "content not a string or list",
        req(messages=[{"role": "user", "content": 3}]),
        "messages[0].content",
        "invalid_value",
    ),
    (
        "block without type",
        req(messages=[{"role": "user", "content": [{"text": "x"}]}]),
        "messages[0].content[0]",
        "invalid_value",
    ),
    (
        "document block",
        req(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                        }
                    ],
                }
            ]
        ),
        "messages[0].content[0].type",
        "unsupported_value",
    ),
    (
        "tool_use in a user turn",
        req(messages=[{"role": "user", "content": [TOOL_USE]}]),
        "messages[0].content[0].type",
        "unsupported_value",
    ),
    (
        "image from the Files API",
        req(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                }
            ]
        ),
        "messages[0].content[0].source.type",
        "unsupported_value",
    ),
    (
        "tool_result without id",
        req(messages=[{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]),
        "messages[0].content[0].tool_use_id",
        "missing_required_parameter",
    ),
    (
        "text block without text",
        req(messages=[{"role": "user", "content": [{"type": "text"}]}]),
        "messages[0].content[0].text",
        "missing_required_parameter",
    ),
    (
        "server tool",
        req(tools=[TOOL, {"type": "web_search_20250305", "name": "web_search"}]),
        "tools[1].type",
        "unsupported_value",
    ),
    (
        "tool without input_schema",
        req(tools=[{"name": "t"}]),
        "tools[0].input_schema",
        "missing_required_parameter",
    ),
    (
        "mcp_servers",
        req(mcp_servers=[{"type": "url", "url": "https://mcp.test", "name": "x"}]),
        "mcp_servers",
        "unsupported_parameter",
    ),
    (
        "tool_choice unknown",
        req(tools=[TOOL], tool_choice={"type": "sometimes"}),
        "tool_choice",
        "invalid_value",
    ),
    (
        "tool_choice tool without name",
        req(tools=[TOOL], tool_choice={"type": "tool"}),
        "tool_choice",
        "invalid_value",
    ),
    (
        "thinking without budget",
        req(thinking={"type": "enabled"}),
        "thinking.budget_tokens",
        "invalid_value",
    ),
    ("thinking unknown type", req(thinking={"type": "maybe"}), "thinking.type", "invalid_value"),
    (
        "effort unknown",
        req(output_config={"effort": "extreme"}),
        "output_config.effort",
        "invalid_value",
    ),
    ("stop_sequences not strings", req(stop_sequences=[1]), "stop_sequences", "invalid_value"),
    ("stream not a bool", req(stream="yes"), "stream", "invalid_value"),
    ("system with an image", req(system=[IMAGE_URL]), "system[0].type", "unsupported_value"),
]


@pytest.mark.parametrize(
    ("name", "body", "param", "code"), BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS]
)
def test_request_errors(name: str, body: Body, param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        messages_to_chat(body)
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, param, code)
    assert param in caught.value.message


def test_unknown_thinking_style_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="thinking style"):
        messages_to_chat(req(), thinking="enable_thinking")


def test_translation_does_not_modify_the_request() -> None:
    body = req(
        system="S",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "a"}]},
            {"role": "user", "content": "b"},
        ],
    )
    before = orjson.dumps(body)
    messages_to_chat(body)
    assert orjson.dumps(body) == before


# -- errors and estimates -------------------------------------------------------------------


ERRORS = [
    (InvalidRequest("bad"), 400, "invalid_request_error"),
    (ProxyError("no key", status=401), 401, "authentication_error"),
    (ProxyError("not yours", status=403), 403, "permission_error"),
    (ProxyError("no such model", status=404), 404, "not_found_error"),
    (ProxyError("odd", status=409), 409, "invalid_request_error"),
    (PayloadTooLarge("big"), 413, "request_too_large"),
    (ProxyError("slow down", status=429), 429, "rate_limit_error"),
    (ProxyError("oops"), 500, "api_error"),
    (UpstreamError("refused"), 502, "api_error"),
    (ServiceUnavailable("shutting down"), 503, "overloaded_error"),
    (UpstreamTimeout("silent"), 504, "timeout_error"),
    (UpstreamStatusError("Overloaded", status=529), 529, "overloaded_error"),
]


@pytest.mark.parametrize(("error", "status", "kind"), ERRORS)
def test_error_body(error: ProxyError, status: int, kind: str) -> None:
    assert error.status == status
    assert error_body(error) == {"type": "error", "error": {"type": kind, "message": error.message}}


COUNTS = [
    # (name, request, estimate): 4 per message, text ceil(chars / 4), CJK 1 each
    ("one short message", {"messages": [{"role": "user", "content": "abcd"}]}, 4 + 1),
    (
        "system and blocks",
        {
            "system": "x" * 8,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 5}]}],
        },
        2 + 4 + 2,
    ),
    ("CJK", {"messages": [{"role": "user", "content": "你好世界"}]}, 4 + 4),
    ("image", {"messages": [{"role": "user", "content": [IMAGE_URL]}]}, 4 + 1600),
    (
        "tool use and result",
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "abcd", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t", "content": "z" * 12}],
                },
            ]
        },
        4 + 1 + 1 + 4 + 3,
    ),
    ("tools", {"messages": [], "tools": [{"name": "n"}]}, 4 + 3),  # {"name":"n"} is 12 chars
]


@pytest.mark.parametrize(("name", "body", "expected"), COUNTS, ids=[c[0] for c in COUNTS])
def test_count_tokens(name: str, body: Body, expected: int) -> None:
    assert count_tokens(body) == expected


def test_count_tokens_needs_messages() -> None:
    with pytest.raises(InvalidRequest) as caught:
        count_tokens({"model": "m"})
    assert caught.value.param == "messages"
