"""Anthropic Messages <-> chat completions translation: tables of pure cases, then the same
events served to Anthropic's own Python SDK (through a mock transport) to prove it accepts them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
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
from proxy.formats.anthropic import (
    THINKING_SIGNATURE,
    MessagesStream,
    count_tokens,
    encode_event,
    error_body,
    message_from_completion,
    messages_to_chat,
    new_message_id,
)
from proxy.formats.chunks import Aggregator

try:
    import httpx2 as hx  # anthropic >= 2 ships its own httpx fork and rejects httpx objects
except ImportError:  # pragma: no cover - anthropic 0.x/1.x
    import httpx as hx  # type: ignore[no-redef]

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


# -- stream ---------------------------------------------------------------------------------


def delta(finish: str | None = None, **fields: Any) -> Body:
    """A normalised chat chunk with one choice."""
    choice: Body = {"index": 0, "delta": fields, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion.chunk", "model": "pub", "choices": [choice]}


def usage_chunk(prompt: int, completion: int, cached: int | None = None) -> Body:
    usage: Body = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "pub",
        "choices": [],
        "usage": usage,
    }


def tool(
    index: int, *, id: str | None = None, name: str | None = None, args: str | None = None
) -> Body:
    call: Body = {"index": index}
    if id is not None:
        call.update(id=id, type="function")
    function = {k: v for k, v in (("name", name), ("arguments", args)) if v is not None}
    if function:
        call["function"] = function
    return call


def start(index: int, block: Body) -> Body:
    return {"type": "content_block_start", "index": index, "content_block": block}


def text_delta(index: int, text: str) -> Body:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "text_delta", "text": text},
    }


def thinking_delta(index: int, text: str) -> Body:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "thinking_delta", "thinking": text},
    }


def json_delta(index: int, partial: str) -> Body:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "input_json_delta", "partial_json": partial},
    }


def signature(index: int) -> Body:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "signature_delta", "signature": THINKING_SIGNATURE},
    }


def stop(index: int) -> Body:
    return {"type": "content_block_stop", "index": index}


def end(reason: str, usage: Body, sequence: str | None = None) -> list[Body]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage,
        },
        {"type": "message_stop"},
    ]


TEXT = {"type": "text", "text": ""}
THINK = {"type": "thinking", "thinking": "", "signature": ""}


def tool_block(id: str, name: str) -> Body:
    return {"type": "tool_use", "id": id, "name": name, "input": {}}


STREAMS = [
    # (name, chunks, stop_sequences, events after message_start)
    (
        "text, usage in the finish chunk (llama.cpp)",
        [
            delta(role="assistant", content=""),
            delta(content="Hel"),
            delta(content="lo"),
            {
                **delta("stop"),
                "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
            },
        ],
        None,
        [
            start(0, TEXT),
            text_delta(0, "Hel"),
            text_delta(0, "lo"),
            stop(0),
            *end("end_turn", {"input_tokens": 9, "output_tokens": 2}),
        ],
    ),
    (
        "the first token rides on the role chunk; text and finish in one chunk (vLLM)",
        [delta(role="assistant", content="Hi"), delta("stop", content="!"), usage_chunk(5, 2)],
        None,
        [
            start(0, TEXT),
            text_delta(0, "Hi"),
            text_delta(0, "!"),
            stop(0),
            *end("end_turn", {"input_tokens": 5, "output_tokens": 2}),
        ],
    ),
    (
        "late usage after the finish chunk; cached tokens moved to cache_read",
        [
            delta(role="assistant", content=""),
            delta(content="ok"),
            delta("stop"),
            usage_chunk(100, 1, cached=80),
        ],
        None,
        [
            start(0, TEXT),
            text_delta(0, "ok"),
            stop(0),
            *end(
                "end_turn", {"input_tokens": 20, "cache_read_input_tokens": 80, "output_tokens": 1}
            ),
        ],
    ),
    (
        "thinking then text (reasoning_content; DashScope's first chunk shape)",
        [
            delta(role="assistant", content=None, reasoning_content=""),
            delta(reasoning_content="Let me"),
            delta(reasoning_content=" think."),
            delta(content="Yes", reasoning_content=None),
            delta("stop"),
            usage_chunk(3, 4),
        ],
        None,
        [
            start(0, THINK),
            thinking_delta(0, "Let me"),
            thinking_delta(0, " think."),
            signature(0),
            stop(0),
            start(1, TEXT),
            text_delta(1, "Yes"),
            stop(1),
            *end("end_turn", {"input_tokens": 3, "output_tokens": 4}),
        ],
    ),
    (
        "reasoning and content in one chunk: thinking first",
        [delta(reasoning="r", content="t"), delta("stop")],
        None,
        [
            start(0, THINK),
            thinking_delta(0, "r"),
            signature(0),
            stop(0),
            start(1, TEXT),
            text_delta(1, "t"),
            stop(1),
            *end("end_turn", {"output_tokens": 1}),
        ],  # "rt": estimated over the whole output
    ),
    (
        "two tool calls, arguments in fragments, the first with the name",
        [
            delta(role="assistant", content=""),
            delta(content="Checking."),
            delta(tool_calls=[tool(0, id="call_a", name="get_weather", args="")]),
            delta(tool_calls=[tool(0, args='{"city": ')]),
            delta(tool_calls=[tool(0, args='"Paris"}')]),
            delta(tool_calls=[tool(1, id="call_b", name="get_time", args='{"tz":')]),
            delta(tool_calls=[tool(1, args=' "CET"}')]),
            delta("tool_calls"),
            usage_chunk(50, 20),
        ],
        None,
        [
            start(0, TEXT),
            text_delta(0, "Checking."),
            stop(0),
            start(1, tool_block("call_a", "get_weather")),
            json_delta(1, '{"city": '),
            json_delta(1, '"Paris"}'),
            stop(1),
            start(2, tool_block("call_b", "get_time")),
            json_delta(2, '{"tz":'),
            json_delta(2, ' "CET"}'),
            stop(2),
            *end("tool_use", {"input_tokens": 50, "output_tokens": 20}),
        ],
    ),
    (
        "whole arguments in the first fragment (Ollama-style) are not dropped",
        [
            delta(tool_calls=[tool(0, id="call_1", name="f", args='{"a": 1}')]),
            delta(tool_calls=[tool(1, id="call_2", name="g", args="{}")]),
            delta("tool_calls"),
        ],
        None,
        [
            start(0, tool_block("call_1", "f")),
            json_delta(0, '{"a": 1}'),
            stop(0),
            start(1, tool_block("call_2", "g")),
            json_delta(1, "{}"),
            stop(1),
            *end("tool_use", {"output_tokens": 3}),
        ],
    ),
    (
        "several calls at one index, told apart by their ids",
        [
            delta(tool_calls=[tool(0, id="c1", name="f", args='{"x":1}')]),
            delta(tool_calls=[tool(0, id="c2", name="f", args='{"x":2}')]),
            delta("tool_calls"),
        ],
        None,
        [
            start(0, tool_block("c1", "f")),
            json_delta(0, '{"x":1}'),
            stop(0),
            start(1, tool_block("c2", "f")),
            json_delta(1, '{"x":2}'),
            stop(1),
            *end("tool_use", {"output_tokens": 4}),
        ],
    ),
    (
        "leading whitespace held back until the JSON starts; empty fragments emit nothing",
        [
            delta(tool_calls=[tool(0, id="c1", name="f", args="")]),
            delta(tool_calls=[tool(0, args="\n ")]),
            delta(tool_calls=[tool(0, args="")]),
            delta(tool_calls=[tool(0, args="{}")]),
            delta("tool_calls"),
        ],
        None,
        [
            start(0, tool_block("c1", "f")),
            json_delta(0, "\n {}"),
            stop(0),
            *end("tool_use", {"output_tokens": 1}),
        ],
    ),
    (
        "a tool call without arguments: input stays {}",
        [delta(tool_calls=[tool(0, id="c1", name="now")]), delta("tool_calls")],
        None,
        [start(0, tool_block("c1", "now")), stop(0), *end("tool_use", {"output_tokens": 0})],
    ),
    (
        "finish_reason stop with tool calls (Qwen, Ollama) is tool_use",
        [delta(tool_calls=[tool(0, id="c1", name="f", args="{}")]), delta("stop")],
        None,
        [
            start(0, tool_block("c1", "f")),
            json_delta(0, "{}"),
            stop(0),
            *end("tool_use", {"output_tokens": 1}),
        ],
    ),
    (
        "length -> max_tokens",
        [delta(content="abcd"), delta("length"), usage_chunk(1, 1)],
        None,
        [
            start(0, TEXT),
            text_delta(0, "abcd"),
            stop(0),
            *end("max_tokens", {"input_tokens": 1, "output_tokens": 1}),
        ],
    ),
    (
        "vLLM's stop_reason names a stop sequence -> stop_sequence",
        [
            delta(content="1, 2"),
            {
                **delta("stop"),
                "choices": [
                    {"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}
                ],
            },
        ],
        ["END", "##"],
        [
            start(0, TEXT),
            text_delta(0, "1, 2"),
            stop(0),
            *end("stop_sequence", {"output_tokens": 1}, "END"),
        ],
    ),
    (
        "vLLM's stop_reason as a token id is a natural end",
        [
            delta(content="x"),
            {
                **delta("stop"),
                "choices": [
                    {"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": 151645}
                ],
            },
        ],
        ["END"],
        [start(0, TEXT), text_delta(0, "x"), stop(0), *end("end_turn", {"output_tokens": 1})],
    ),
    (
        "content_filter -> refusal",
        [delta(content="I"), delta("content_filter")],
        None,
        [start(0, TEXT), text_delta(0, "I"), stop(0), *end("refusal", {"output_tokens": 1})],
    ),
    (
        "an empty answer: no block at all",
        [delta(role="assistant", content=""), delta("stop"), usage_chunk(7, 0)],
        None,
        end("end_turn", {"input_tokens": 7, "output_tokens": 0}),
    ),
    (
        "other choices and empty chunks are ignored",
        [
            {"choices": None},
            {"choices": [{"index": 1, "delta": {"content": "no"}}]},
            delta(content="yes"),
            delta("stop"),
        ],
        None,
        [start(0, TEXT), text_delta(0, "yes"), stop(0), *end("end_turn", {"output_tokens": 1})],
    ),
]


def run_stream(chunks: list[Body], stop_sequences: list[str] | None = None) -> list[Body]:
    stream = MessagesStream(
        message_id="msg_x", model="pub", input_tokens=12, stop_sequences=stop_sequences
    )
    events = stream.start()
    for chunk in chunks:
        events += stream.feed(chunk)
    return events + stream.finish()


MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_x", "type": "message", "role": "assistant", "model": "pub", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0},
    },
}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "chunks", "stops", "expected"), STREAMS, ids=[s[0] for s in STREAMS]
)
def test_stream_events(
    name: str, chunks: list[Body], stops: list[str] | None, expected: list[Body]
) -> None:
    assert run_stream(chunks, stops) == [MESSAGE_START, *expected]


@pytest.mark.parametrize(
    ("name", "chunks", "stops", "expected"), STREAMS, ids=[s[0] for s in STREAMS]
)
def test_stream_invariants(
    name: str, chunks: list[Body], stops: list[str] | None, expected: list[Body]
) -> None:
    """What every stream must satisfy, whatever the table says."""
    events = run_stream(chunks, stops)
    assert [e["type"] for e in events].count("message_start") == 1
    open_index = None
    for event in events:
        if event["type"] == "content_block_start":
            assert open_index is None  # the previous block was stopped first
            open_index = event["index"]
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_index
            payload = [v for k, v in event["delta"].items() if k != "type"]
            assert payload and all(payload)  # never an empty delta
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_index
            open_index = None
    starts = [e["index"] for e in events if e["type"] == "content_block_start"]
    assert starts == list(range(len(starts)))


def test_message_start_is_sent_once_and_at_once() -> None:
    stream = MessagesStream(message_id="msg_x", model="pub", input_tokens=12)
    assert stream.start() == [MESSAGE_START]
    assert stream.start() == []
    assert stream.feed(delta(reasoning_content="hm"))[0]["type"] == "content_block_start"


def test_feed_before_start_still_begins_with_message_start() -> None:
    stream = MessagesStream(message_id="msg_x", model="pub", input_tokens=12)
    events = stream.feed(delta(content="a"))
    assert events[0] == MESSAGE_START and stream.start() == []


def test_usage_property_is_the_chat_usage_last_seen() -> None:
    stream = MessagesStream(message_id="msg_x", model="pub")
    assert stream.usage is None
    stream.feed(delta(content="a"))
    stream.feed(usage_chunk(4, 2))
    assert stream.usage == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def test_output_tokens_estimated_without_upstream_usage() -> None:
    events = run_stream([delta(content="x" * 40), delta("stop")])
    assert events[-2]["usage"] == {"output_tokens": 10}


FAILURES: list[tuple[ProxyError, str]] = [
    (UpstreamError("upstream reset"), "api_error"),
    (UpstreamTimeout("idle"), "timeout_error"),
    (UpstreamStatusError("busy", status=529), "overloaded_error"),
    (UpstreamStatusError("slow down", status=429), "rate_limit_error"),
]


@pytest.mark.parametrize(("error", "kind"), FAILURES)
def test_failure_mid_stream(error: ProxyError, kind: str) -> None:
    stream = MessagesStream(message_id="msg_x", model="pub")
    stream.start()
    assert stream.feed(delta(content="par"))[-1] == text_delta(0, "par")
    assert stream.fail(error) == [
        {"type": "error", "error": {"type": kind, "message": error.message}}
    ]
    assert (
        stream.feed(delta(content="more")) == []
        and stream.finish() == []
        and stream.fail(error) == []
    )


def test_nothing_after_finish() -> None:
    stream = MessagesStream(message_id="msg_x", model="pub")
    stream.finish()
    assert stream.feed(delta(content="late")) == [] and stream.finish() == []


@pytest.mark.parametrize(
    ("chunks", "code"),
    [
        (
            [
                delta(tool_calls=[tool(0, id="a", name="f", args="{")]),
                delta(content="x"),
                delta(tool_calls=[tool(0, args="}")]),
            ],
            "upstream_interleaved_tool_calls",
        ),
        ([delta(tool_calls=[tool(0, id="a", args="{}")])], "upstream_tool_call_without_name"),
    ],
)
def test_tool_calls_that_would_lose_arguments_raise(chunks: list[Body], code: str) -> None:
    stream = MessagesStream(message_id="msg_x", model="pub")
    with pytest.raises(UpstreamError) as caught:
        for chunk in chunks:
            stream.feed(chunk)
    assert caught.value.code == code


def test_sse_framing() -> None:
    assert encode_event({"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert encode_event(text_delta(0, "é\n")) == (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"\xc3\xa9\\n"}}\n\n'
    )


# -- non-stream -----------------------------------------------------------------------------


def completion(
    message: Body, finish: str = "stop", usage: Body | None = None, **choice: Any
) -> Body:
    body: Body = {"id": "c", "object": "chat.completion", "model": "pub",
                  "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **choice}]}  # fmt: skip
    if usage is not None:
        body["usage"] = usage
    return body


USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
USAGE_OUT = {
    "input_tokens": 10,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "output_tokens": 5,
}

COMPLETIONS = [
    # (name, completion, stop_sequences, content, stop_reason, stop_sequence, usage)
    (
        "text",
        completion({"content": "Hi"}, usage=USAGE),
        None,
        [{"type": "text", "text": "Hi"}],
        "end_turn",
        None,
        USAGE_OUT,
    ),
    (
        "thinking, text and a tool call",
        completion(
            {"reasoning_content": "r", "content": "c", "tool_calls": [CALL]}, "tool_calls", USAGE
        ),
        None,
        [
            {"type": "thinking", "thinking": "r", "signature": THINKING_SIGNATURE},
            {"type": "text", "text": "c"},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ],
        "tool_use",
        None,
        USAGE_OUT,
    ),
    (
        "invalid tool JSON kept raw; no content is null",
        completion(
            {
                "content": None,
                "tool_calls": [{**CALL, "function": {"name": "f", "arguments": '{"a": '}}],
            },
            "tool_calls",
            USAGE,
        ),
        None,
        [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"_raw": '{"a": '}}],
        "tool_use",
        None,
        USAGE_OUT,
    ),
    (
        "length, cached tokens",
        completion(
            {"content": "ab"}, "length", {**USAGE, "prompt_tokens_details": {"cached_tokens": 4}}
        ),
        None,
        [{"type": "text", "text": "ab"}],
        "max_tokens",
        None,
        {**USAGE_OUT, "input_tokens": 6, "cache_read_input_tokens": 4},
    ),
    (
        "vLLM stop string",
        completion({"content": "1"}, "stop", USAGE, stop_reason="##"),
        ["##"],
        [{"type": "text", "text": "1"}],
        "stop_sequence",
        "##",
        USAGE_OUT,
    ),
    (
        "no usage: output estimated",
        completion({"content": "x" * 8}),
        None,
        [{"type": "text", "text": "x" * 8}],
        "end_turn",
        None,
        {**USAGE_OUT, "input_tokens": 0, "output_tokens": 2},
    ),
]


@pytest.mark.parametrize(
    ("name", "body", "stops", "content", "reason", "sequence", "usage"),
    COMPLETIONS,
    ids=[c[0] for c in COMPLETIONS],
)
def test_message_from_completion(
    name: str,
    body: Body,
    stops: list[str] | None,
    content: list[Body],
    reason: str,
    sequence: str | None,
    usage: Body,
) -> None:
    assert message_from_completion(body, message_id="msg_1", model="pub", stop_sequences=stops) == {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "pub", "content": content,
        "stop_reason": reason, "stop_sequence": sequence, "usage": usage,
    }  # fmt: skip


def test_generated_tool_id_when_the_upstream_gave_none() -> None:
    body = completion(
        {"tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        "tool_calls",
    )
    block = message_from_completion(body, message_id="m", model="p")["content"][0]
    assert re.fullmatch(r"toolu_[0-9A-Za-z]{24}", block["id"])


def test_new_message_id() -> None:
    ids = {new_message_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"msg_[0-9A-Za-z]{24}", i) for i in ids)


# -- Anthropic's SDK ------------------------------------------------------------------------
# A mock transport plays the proxy: it translates the SDK's real request with
# messages_to_chat, answers it from a scripted chat upstream through MessagesStream or
# message_from_completion, and frames the events as SSE. The SDK must accept every byte.


def sse(events: list[Body]) -> Iterator[bytes]:
    for event in events:
        yield encode_event(event)


class Frames(hx.SyncByteStream):  # type: ignore[misc]
    """The response body, one SSE frame per read, as a streaming proxy writes them."""

    def __init__(self, frames: Iterator[bytes]) -> None:
        self.frames = frames

    def __iter__(self) -> Iterator[bytes]:
        yield from self.frames


def fake_proxy(
    upstream: Callable[[Body], list[Body]], *, fail_after: int | None = None
) -> Callable[[Any], Any]:
    """The handler of a mock transport serving POST /v1/messages from ``upstream``."""

    def handler(request: Any) -> Any:
        assert request.method == "POST" and request.url.path == "/v1/messages"
        body = orjson.loads(request.read())
        try:
            chat_body = messages_to_chat(body)
        except InvalidRequest as exc:
            return hx.Response(exc.status, json=error_body(exc))
        chunks = upstream(chat_body)
        if not chat_body.get("stream"):
            aggregator = Aggregator()  # what the proxy does for a stream-only upstream
            for chunk in chunks:
                aggregator.add(chunk)
            message = message_from_completion(
                aggregator.result(),
                message_id=new_message_id(),
                model=body["model"],
                stop_sequences=body.get("stop_sequences"),
            )
            return hx.Response(200, json=message)
        stream = MessagesStream(
            message_id=new_message_id(),
            model=body["model"],
            input_tokens=count_tokens(body),
            stop_sequences=body.get("stop_sequences"),
        )
        events = stream.start()
        for number, chunk in enumerate(chunks):
            if fail_after is not None and number == fail_after:
                events += [
                    {"type": "ping"},
                    *stream.fail(UpstreamStatusError("Overloaded", status=529)),
                ]
                break
            events += stream.feed(chunk)
        else:
            events += stream.finish()
        headers = {"content-type": "text/event-stream; charset=utf-8"}
        return hx.Response(200, headers=headers, stream=Frames(sse(events)))

    return handler


@pytest.fixture
def client_for() -> Iterator[Callable[..., anthropic.Anthropic]]:
    made: list[anthropic.Anthropic] = []

    def make(upstream: Callable[[Body], list[Body]], **options: Any) -> anthropic.Anthropic:
        transport = hx.MockTransport(fake_proxy(upstream, **options))
        client = anthropic.Anthropic(
            base_url="http://test",
            api_key="x",
            max_retries=0,
            http_client=hx.Client(transport=transport),
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


class Scripted:
    """A chat upstream that answers with the same chunks and records what it was asked."""

    def __init__(self, *chunks: Body) -> None:
        self.chunks = list(chunks)
        self.requests: list[Body] = []

    def __call__(self, chat_body: Body) -> list[Body]:
        self.requests.append(chat_body)
        return self.chunks


WEATHER_ARGS = {"city": "Zürich", "units": "metric", "note": 'a "quoted" \\ path\nline 2 – 東京'}
WEATHER_JSON = orjson.dumps(WEATHER_ARGS).decode()


def tools_upstream() -> Scripted:
    return Scripted(
        delta(role="assistant", content=""),
        delta(content="Let me check."),
        # One fragment per character: every prefix the SDK parses (jiter, partial mode) must do.
        delta(tool_calls=[tool(0, id="call_w", name="get_weather", args="")]),
        *(delta(tool_calls=[tool(0, args=char)]) for char in " " + WEATHER_JSON),
        delta(tool_calls=[tool(1, id="call_t", name="get_time", args='{"tz": "CET"}')]),
        delta(tool_calls=[tool(2, id="call_n", name="now", args="")]),
        delta("tool_calls"),
        usage_chunk(40, 30),
    )


def thinking_upstream() -> Scripted:
    return Scripted(
        delta(role="assistant", content=None, reasoning_content=""),
        delta(reasoning_content="Two plus two"),
        delta(reasoning_content=" is four."),
        delta(content="4"),
        delta("stop"),
        usage_chunk(8, 6, cached=2),
    )


REQUEST: Body = {
    "model": "pub",
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "Weather in Zürich?"}],
}


def test_sdk_text_stream_and_final_message(client_for: Callable[..., anthropic.Anthropic]) -> None:
    client = client_for(
        Scripted(
            delta(role="assistant", content="Hel"),
            delta(content="lo, "),
            delta(content="世界"),
            delta("stop"),
            usage_chunk(9, 3),
        )
    )
    with client.messages.stream(**REQUEST) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == ["Hel", "lo, ", "世界"]
    assert [b.type for b in final.content] == ["text"] and final.content[0].text == "Hello, 世界"
    assert (final.stop_reason, final.stop_sequence, final.model) == ("end_turn", None, "pub")
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 3)
    assert re.fullmatch(r"msg_[0-9A-Za-z]{24}", final.id)


def test_sdk_tool_use_inputs_are_the_arguments(
    client_for: Callable[..., anthropic.Anthropic],
) -> None:
    upstream = tools_upstream()
    client = client_for(upstream)
    with client.messages.stream(**REQUEST, tools=[TOOL]) as stream:
        final = stream.get_final_message()
    (asked,) = upstream.requests  # the SDK's own request, translated
    assert asked["tools"] == [CHAT_TOOL]
    assert asked["stream"] is True and asked["stream_options"] == {"include_usage": True}
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use", "tool_use"]
    weather, time_, now = final.content[1:]
    assert (weather.id, weather.name, weather.input) == ("call_w", "get_weather", WEATHER_ARGS)
    assert (time_.id, time_.name, time_.input) == ("call_t", "get_time", {"tz": "CET"})
    assert (now.name, now.input) == ("now", {})
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (40, 30)


def test_sdk_thinking_block(client_for: Callable[..., anthropic.Anthropic]) -> None:
    upstream = thinking_upstream()
    client = client_for(upstream)
    thinking = []
    with client.messages.stream(
        **REQUEST, thinking={"type": "enabled", "budget_tokens": 2048}
    ) as stream:
        for event in stream:
            if event.type == "thinking":
                thinking.append(event.thinking)
        final = stream.get_final_message()
    assert upstream.requests[0]["reasoning_effort"] == "low"
    assert thinking == ["Two plus two", " is four."]
    block, text = final.content
    assert (block.type, block.thinking, block.signature) == (
        "thinking",
        "Two plus two is four.",
        THINKING_SIGNATURE,
    )
    assert (text.type, text.text) == ("text", "4")
    assert (
        final.usage.input_tokens,
        final.usage.cache_read_input_tokens,
        final.usage.output_tokens,
    ) == (6, 2, 6)
    # The message goes back as history, as Claude Code sends it, and translates.
    history = [
        *REQUEST["messages"],
        {"role": "assistant", "content": [b.model_dump() for b in final.content]},
        {"role": "user", "content": "And 3+3?"},
    ]
    assert messages_to_chat({**REQUEST, "messages": history})["messages"][1] == {
        "role": "assistant",
        "content": "4",
    }


def test_sdk_raw_event_iteration(client_for: Callable[..., anthropic.Anthropic]) -> None:
    client = client_for(thinking_upstream())
    events = list(client.messages.create(**REQUEST, stream=True))
    assert [e.type for e in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop", "content_block_start", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[4].delta.type == "signature_delta"
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens == 6


def test_sdk_non_stream_message(client_for: Callable[..., anthropic.Anthropic]) -> None:
    client = client_for(tools_upstream())
    message = client.messages.create(**REQUEST, tools=[TOOL])
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use", "tool_use"]
    assert message.content[1].input == WEATHER_ARGS
    assert message.stop_reason == "tool_use" and message.usage.output_tokens == 30


def test_sdk_stop_sequence(client_for: Callable[..., anthropic.Anthropic]) -> None:
    finish = {
        **delta("stop"),
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}],
    }
    client = client_for(Scripted(delta(content="1 2 3"), finish))
    with client.messages.stream(**REQUEST, stop_sequences=["END"]) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")


@pytest.mark.parametrize(
    ("error", "exception"),
    [
        (InvalidRequest("Missing required parameter: 'max_tokens'."), anthropic.BadRequestError),
        (ProxyError("slow down", status=429), anthropic.RateLimitError),
        (UpstreamStatusError("Overloaded", status=529), anthropic.OverloadedError),
        (UpstreamError("refused"), anthropic.InternalServerError),
    ],
)
def test_sdk_http_errors(error: ProxyError, exception: type[anthropic.APIStatusError]) -> None:
    transport = hx.MockTransport(lambda request: hx.Response(error.status, json=error_body(error)))
    http_client = hx.Client(transport=transport)
    with (
        anthropic.Anthropic(
            base_url="http://test", api_key="x", max_retries=0, http_client=http_client
        ) as client,
        pytest.raises(exception) as caught,
    ):
        client.messages.create(**REQUEST)
    assert caught.value.status_code == error.status
    assert caught.value.body == error_body(error)


def test_sdk_request_error_from_translation(client_for: Callable[..., anthropic.Anthropic]) -> None:
    client = client_for(Scripted())
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            **REQUEST, tools=[{"type": "web_search_20250305", "name": "web_search"}]
        )
    assert "tools[0].type" in caught.value.message


def test_sdk_error_event_mid_stream_raises(client_for: Callable[..., anthropic.Anthropic]) -> None:
    client = client_for(
        Scripted(delta(content="Hel"), delta(content="lo"), delta("stop")), fail_after=1
    )
    texts = []
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(**REQUEST) as stream,
    ):
        texts.extend(stream.text_stream)
    assert texts == ["Hel"]
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
