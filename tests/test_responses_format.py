"""The Responses <-> chat completions translation (proxy.formats.responses), without a server.

Tables: Responses requests to chat requests and to the 400s they earn; chat chunk sequences to
exact Responses event lists. Then the events are rendered as SSE and read by openai-python
itself (``responses.create(stream=True)`` and the ``responses.stream()`` helper, which checks
the event order and accumulates), every event is validated against openai-python's pydantic
types, and the non-stream ``response`` object is validated as ``Response``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import openai
import orjson
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from proxy.errors import InvalidRequest, ProxyError, UpstreamError, UpstreamTimeout
from proxy.formats.responses import (
    ResponsesStream,
    chat_request,
    new_response_id,
    response_from_completion,
    responses_usage,
)

Json = dict[str, Any]
EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)


# --- request translation -------------------------------------------------------------------

CALL_F = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"a":1}'}
CALL_G = {"type": "function_call", "call_id": "call_2", "name": "g", "arguments": "{}"}
CHAT_F = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
CHAT_G = {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}
IMAGE = {"type": "input_image", "image_url": "https://x.test/cat.png", "detail": "low"}
CHAT_IMAGE = {"type": "image_url", "image_url": {"url": "https://x.test/cat.png", "detail": "low"}}
HI = [{"role": "user", "content": "hi"}]

# fmt: off
REQUESTS: list[tuple[str, Json, Json]] = [
    ("string input", {"model": "m", "input": "hi"}, {"model": "m", "messages": HI}),
    ("instructions first, as system",
     {"input": "hi", "instructions": "Be brief."},
     {"messages": [{"role": "system", "content": "Be brief."}, *HI]}),
    ("empty instructions add nothing", {"input": "hi", "instructions": ""}, {"messages": HI}),
    ("developer becomes system, system stays, type may be omitted",
     {"input": [{"type": "message", "role": "developer", "content": "d"}, {"role": "system", "content": "s"}, {"role": "user", "content": "u"}]},
     {"messages": [{"role": "system", "content": "d"}, {"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}),
    ("text parts joined into one string",
     {"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]}]},
     {"messages": [{"role": "user", "content": "a\nb"}]}),
    ("an image keeps the parts as a list",
     {"input": [{"role": "user", "content": [{"type": "input_text", "text": "what?"}, IMAGE]}]},
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, CHAT_IMAGE]}]}),
    ("audio parts have the same shape in chat",
     {"input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}]}]},
     {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}]}]}),
    ("assistant history: output_text and refusal as text",
     {"input": [*HI, {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "yo", "annotations": []}]},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}]},
     {"messages": [*HI, {"role": "assistant", "content": "yo"}, {"role": "assistant", "content": "no"}]}),
    ("consecutive function calls make one assistant turn; outputs become tool messages",
     {"input": [*HI, CALL_F, CALL_G, {"type": "function_call_output", "call_id": "call_1", "output": "1"},
                {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "2"}]}]},
     {"messages": [*HI, {"role": "assistant", "content": None, "tool_calls": [CHAT_F, CHAT_G]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "1"},
                   {"role": "tool", "tool_call_id": "call_2", "content": "2"}]}),
    ("a function call joins the assistant text before it; reasoning items are dropped",
     {"input": [*HI, {"type": "reasoning", "id": "rs_1", "summary": []}, {"role": "assistant", "content": "Let me look."},
                {**CALL_F, "id": "fc_1", "status": "completed"}]},
     {"messages": [*HI, {"role": "assistant", "content": "Let me look.", "tool_calls": [CHAT_F]}]}),
    ("function tools nested; tool_choice by name",
     {"input": "hi", "parallel_tool_calls": False, "tool_choice": {"type": "function", "name": "f"},
      "tools": [{"type": "function", "name": "f", "description": "F.", "parameters": {"type": "object"}, "strict": True},
                {"type": "function", "name": "g", "parameters": None, "strict": None}]},
     {"messages": HI, "parallel_tool_calls": False, "tool_choice": {"type": "function", "function": {"name": "f"}},
      "tools": [{"type": "function", "function": {"name": "f", "description": "F.", "parameters": {"type": "object"}, "strict": True}},
                {"type": "function", "function": {"name": "g"}}]}),
    ("tool_choice auto", {"input": "hi", "tool_choice": "auto"}, {"messages": HI, "tool_choice": "auto"}),
    ("tool_choice none", {"input": "hi", "tool_choice": "none"}, {"messages": HI, "tool_choice": "none"}),
    ("tool_choice required", {"input": "hi", "tool_choice": "required"}, {"messages": HI, "tool_choice": "required"}),
    ("sampling and limits; metadata, store and other Responses-only fields dropped",
     {"input": "hi", "max_output_tokens": 64, "temperature": 0.2, "top_p": 1, "user": "u1", "metadata": {"k": "v"},
      "store": True, "include": ["reasoning.encrypted_content"], "truncation": "auto", "previous_response_id": None,
      "service_tier": "auto", "top_logprobs": 2},
     {"messages": HI, "max_tokens": 64, "temperature": 0.2, "top_p": 1, "user": "u1"}),
    ("json_schema format",
     {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}, "verbosity": "low"}},
     {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}}}),
    ("json_object format",
     {"input": "hi", "text": {"format": {"type": "json_object"}}},
     {"messages": HI, "response_format": {"type": "json_object"}}),
    ("text format needs nothing", {"input": "hi", "text": {"format": {"type": "text"}}}, {"messages": HI}),
    ("reasoning effort; the summary setting has no chat twin",
     {"input": "hi", "reasoning": {"effort": "high", "summary": "auto"}},
     {"messages": HI, "reasoning_effort": "high"}),
    ("streaming always asks for usage",
     {"input": "hi", "stream": True},
     {"messages": HI, "stream": True, "stream_options": {"include_usage": True}}),
    ("stream false kept", {"input": "hi", "stream": False}, {"messages": HI, "stream": False}),
]
# fmt: on


@pytest.mark.parametrize(("name", "body", "chat"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_chat_request(name: str, body: Json, chat: Json) -> None:
    assert chat_request(body) == chat


HOSTED_TOOLS = [
    "web_search",
    "web_search_preview",
    "file_search",
    "computer_use_preview",
    "code_interpreter",
    "image_generation",
    "mcp",
    "local_shell",
    "custom",
]
# fmt: off
BAD_REQUESTS: list[tuple[Any, str, str]] = [
    ({"model": "m"}, "input", "missing_required_parameter"),
    ([], "body", "invalid_type"),
    ({"input": 5}, "input", "invalid_type"),
    ({"input": [5]}, "input[0]", "invalid_type"),
    ({"input": "hi", "instructions": ["x"]}, "instructions", "invalid_type"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "invalid_value"),
    ({"input": [{"role": "user"}]}, "input[0].content", "missing_required_parameter"),
    ({"input": [{"role": "user", "content": 3}]}, "input[0].content", "invalid_type"),
    ({"input": [*HI, {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "foo"}]}]}, "input[1].content[1].type", "invalid_value"),
    ({"input": [*HI, *HI, {"role": "user", "content": [{"type": 1}]}]}, "input[2].content[0].type", "invalid_type"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 1}]}]}, "input[0].content[0].text", "invalid_type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}, "input[0].content[0].file_id", "unsupported_parameter"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]}, "input[0].content[0].type", "unsupported_value"),
    ({"input": [{"role": "assistant", "content": [{"type": "output_text", "text": "a"}, IMAGE]}]}, "input[0].content[1].type", "unsupported_value"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id", "missing_required_parameter"),
    ({"input": [{**CALL_F, "arguments": {"a": 1}}]}, "input[0].arguments", "invalid_type"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": [IMAGE]}]}, "input[0].output[0].type", "unsupported_value"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "unsupported_value"),
    ({"input": [*HI, {"type": "web_search_call", "id": "ws_1"}]}, "input[1].type", "unsupported_value"),
    ({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name", "missing_required_parameter"),
    ({"input": "hi", "tools": {"type": "function"}}, "tools", "invalid_type"),
    ({"input": "hi", "tool_choice": {"type": "web_search_preview"}}, "tool_choice", "unsupported_value"),
    ({"input": "hi", "tool_choice": "any"}, "tool_choice", "unsupported_value"),
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter"),
    ({"input": "hi", "conversation": "conv_1"}, "conversation", "unsupported_parameter"),
    ({"input": "hi", "prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
    ({"input": "hi", "background": True}, "background", "unsupported_parameter"),
    ({"input": "hi", "temperature": "hot"}, "temperature", "invalid_type"),
    ({"input": "hi", "temperature": True}, "temperature", "invalid_type"),
    ({"input": "hi", "max_output_tokens": 1.5}, "max_output_tokens", "invalid_type"),
    ({"input": "hi", "stream": "yes"}, "stream", "invalid_type"),
    ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type", "invalid_value"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", "missing_required_parameter"),
    ({"input": "hi", "reasoning": {"effort": 1}}, "reasoning.effort", "invalid_type"),
    *[({"input": "hi", "tools": [{"type": "function", "name": "f"}, {"type": tool}]}, "tools[1].type", "unsupported_value")
      for tool in HOSTED_TOOLS],
]
# fmt: on


@pytest.mark.parametrize(
    ("body", "param", "code"), BAD_REQUESTS, ids=[f"{b[1]}-{b[2]}" for b in BAD_REQUESTS]
)
def test_chat_request_refuses(body: Any, param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_request(body)
    error = caught.value
    assert (error.status, error.type, error.param, error.code) == (
        400,
        "invalid_request_error",
        param,
        code,
    )
    assert error.message


@pytest.mark.parametrize("tool", HOSTED_TOOLS)
def test_hosted_tools_refused_with_a_reason(tool: str) -> None:
    with pytest.raises(InvalidRequest, match=f"Tool type '{tool}'.*only chat completions"):
        chat_request({"input": "hi", "tools": [{"type": tool}]})


def test_stateful_refusals_say_why() -> None:
    with pytest.raises(InvalidRequest, match="keeps no conversation state"):
        chat_request({"input": "hi", "previous_response_id": "resp_1"})
    with pytest.raises(InvalidRequest, match="keeps no conversation state"):
        chat_request({"input": "hi", "conversation": {"id": "conv_1"}})


def test_chat_request_leaves_the_body_alone() -> None:
    body = {"input": [*HI, CALL_F], "tools": [{"type": "function", "name": "f"}], "stream": True}
    before = orjson.dumps(body)
    chat_request(body)
    assert orjson.dumps(body) == before


# --- stream translation: chat chunks -> events ---------------------------------------------


def chunk(delta: Json | None = None, finish: str | None = None, **extra: Any) -> Json:
    """One chat.completion.chunk as the proxy normalises them."""
    choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [choice],
        **extra,
    }


def usage_chunk(prompt: int = 5, completion: int = 7, cached: int = 2, reasoning: int = 3) -> Json:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": usage,
    }


def call(
    index: int, name: str | None = None, arguments: str = "", call_id: str | None = None
) -> Json:
    fragment: Json = {"index": index, "function": {"arguments": arguments}}
    if name is not None:
        fragment["id"] = call_id or f"call_{name}"
        fragment["type"] = "function"
        fragment["function"]["name"] = name
    return fragment


ROLE = chunk({"role": "assistant", "content": ""})
USAGE = {
    "input_tokens": 5,
    "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
    "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 3},
    "total_tokens": 12,
}
REQUEST: Json = {"model": "public", "input": "hi", "stream": True}

# fmt: off
SCENARIOS: dict[str, list[Json]] = {
    "text, usage late": [ROLE, chunk({"content": "Hel"}), chunk({"content": "lo"}), chunk({"content": ""}, "stop"), usage_chunk()],
    "text, usage in the finish chunk": [ROLE, chunk({"content": "Hello"}), chunk({}, "stop", usage=usage_chunk()["usage"])],
    "length": [ROLE, chunk({"content": "Hel"}), chunk({}, "length"), usage_chunk()],
    "content_filter": [ROLE, chunk({"content": "Hel"}), chunk({}, "content_filter")],
    "reasoning then text": [
        ROLE,
        chunk({"reasoning_content": "Think", "content": None}),
        chunk({"reasoning_content": "ing.", "content": None}),
        chunk({"reasoning_content": None, "content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        usage_chunk(),
    ],
    "two parallel tool calls interleaved by index": [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [call(0, "get_weather")]}),
        chunk({"tool_calls": [call(1, "get_time")]}),
        chunk({"tool_calls": [call(0, arguments='{"city":')]}),
        chunk({"tool_calls": [call(1, arguments='{"tz":"UTC"}')]}),
        chunk({"tool_calls": [call(0, arguments='"Paris"}')]}),
        chunk({}, "tool_calls"),
        usage_chunk(),
    ],
    "text then a tool call": [
        ROLE,
        chunk({"content": "Let me check."}),
        chunk({"tool_calls": [call(0, "get_weather", '{"city":"Paris"}')]}),
        chunk({}, "tool_calls"),
        usage_chunk(),
    ],
    "no usage at all": [ROLE, chunk({"content": "Hello"}), chunk({}, "stop")],
}
# fmt: on


def run(
    chunks: list[Json], request: Json = REQUEST, failure: ProxyError | None = None
) -> list[Json]:
    stream = ResponsesStream(
        response_id="resp_test", model="public", request=request, created_at=1700000000
    )
    events = stream.start()
    for each in chunks:
        events += stream.feed(each)
    return events + (stream.fail(failure) if failure else stream.finish())


def ids(events: list[Json]) -> dict[str, str]:
    """Each item id -> ``<prefix>_<n>`` in order of appearance, for exact tables."""
    names: dict[str, str] = {}
    for event in events:
        for item_id in (event.get("item_id"), (event.get("item") or {}).get("id")):
            if item_id and item_id not in names:
                prefix = item_id.split("_")[0]
                names[item_id] = (
                    f"{prefix}_{sum(n.startswith(prefix + '_') for n in names.values()) + 1}"
                )
    return names


def brief(events: list[Json]) -> list[tuple[Any, ...]]:
    """(sequence_number, type, item, the one value that matters) per event."""
    names = ids(events)
    rows: list[tuple[Any, ...]] = []
    for event in events:
        item = event.get("item") or {}
        ref = names.get(event.get("item_id") or item.get("id") or "")
        if "response" in event:
            value: Any = event["response"]["status"]
        elif "delta" in event:
            value = event["delta"]
        elif "text" in event:
            value = event["text"]
        elif "arguments" in event:
            value = event["arguments"]
        elif "part" in event:
            value = (event["part"]["type"], event["part"]["text"])
        else:
            value = (item["status"], item.get("name"), item.get("arguments"))
        rows.append((event["sequence_number"], event["type"], ref, value))
    return rows


# fmt: off
LIFECYCLE_START = [(0, "response.created", None, "in_progress"), (1, "response.in_progress", None, "in_progress")]


def text_rows(start: int, ref: str, deltas: list[str], status: str = "completed") -> list[tuple[Any, ...]]:
    """The rows of one message item: added, part added, the deltas, then the three dones."""
    text, n = "".join(deltas), start + 2 + len(deltas)
    return [
        (start, "response.output_item.added", ref, ("in_progress", None, None)),
        (start + 1, "response.content_part.added", ref, ("output_text", "")),
        *[(start + 2 + i, "response.output_text.delta", ref, delta) for i, delta in enumerate(deltas)],
        (n, "response.output_text.done", ref, text),
        (n + 1, "response.content_part.done", ref, ("output_text", text)),
        (n + 2, "response.output_item.done", ref, (status, None, None)),
    ]


EXPECTED: dict[str, list[tuple[Any, ...]]] = {
    "text, usage late": [*LIFECYCLE_START, *text_rows(2, "msg_1", ["Hel", "lo"]), (9, "response.completed", None, "completed")],
    "text, usage in the finish chunk": [*LIFECYCLE_START, *text_rows(2, "msg_1", ["Hello"]), (8, "response.completed", None, "completed")],
    "length": [*LIFECYCLE_START, *text_rows(2, "msg_1", ["Hel"], "incomplete"), (8, "response.incomplete", None, "incomplete")],
    "content_filter": [*LIFECYCLE_START, *text_rows(2, "msg_1", ["Hel"], "incomplete"), (8, "response.incomplete", None, "incomplete")],
    "reasoning then text": [
        *LIFECYCLE_START,
        (2, "response.output_item.added", "rs_1", ("in_progress", None, None)),
        (3, "response.content_part.added", "rs_1", ("reasoning_text", "")),
        (4, "response.reasoning_text.delta", "rs_1", "Think"),
        (5, "response.reasoning_text.delta", "rs_1", "ing."),
        (6, "response.reasoning_text.done", "rs_1", "Thinking."),
        (7, "response.content_part.done", "rs_1", ("reasoning_text", "Thinking.")),
        (8, "response.output_item.done", "rs_1", ("completed", None, None)),
        *text_rows(9, "msg_1", ["Hel", "lo"]),
        (16, "response.completed", None, "completed"),
    ],
    "two parallel tool calls interleaved by index": [
        *LIFECYCLE_START,
        (2, "response.output_item.added", "fc_1", ("in_progress", "get_weather", "")),
        (3, "response.output_item.added", "fc_2", ("in_progress", "get_time", "")),
        (4, "response.function_call_arguments.delta", "fc_1", '{"city":'),
        (5, "response.function_call_arguments.delta", "fc_2", '{"tz":"UTC"}'),
        (6, "response.function_call_arguments.delta", "fc_1", '"Paris"}'),
        (7, "response.function_call_arguments.done", "fc_1", '{"city":"Paris"}'),
        (8, "response.output_item.done", "fc_1", ("completed", "get_weather", '{"city":"Paris"}')),
        (9, "response.function_call_arguments.done", "fc_2", '{"tz":"UTC"}'),
        (10, "response.output_item.done", "fc_2", ("completed", "get_time", '{"tz":"UTC"}')),
        (11, "response.completed", None, "completed"),
    ],
    "text then a tool call": [
        *LIFECYCLE_START,
        *text_rows(2, "msg_1", ["Let me check."]),
        (8, "response.output_item.added", "fc_1", ("in_progress", "get_weather", "")),
        (9, "response.function_call_arguments.delta", "fc_1", '{"city":"Paris"}'),
        (10, "response.function_call_arguments.done", "fc_1", '{"city":"Paris"}'),
        (11, "response.output_item.done", "fc_1", ("completed", "get_weather", '{"city":"Paris"}')),
        (12, "response.completed", None, "completed"),
    ],
    "no usage at all": [*LIFECYCLE_START, *text_rows(2, "msg_1", ["Hello"]), (8, "response.completed", None, "completed")],
}
# fmt: on
@pytest.mark.parametrize("name", SCENARIOS)
def test_stream_table(name: str) -> None:
    assert brief(run(SCENARIOS[name])) == EXPECTED[name]


@pytest.mark.parametrize("name", SCENARIOS)
def test_stream_invariants(name: str) -> None:
    """Numbered 0..n-1, every event valid for openai-python's types, every item closed, ids
    unique with the right prefix, no empty delta, the final output = the items as done."""
    events = run(SCENARIOS[name])
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        EVENTS.validate_python(event)
        assert event.get("delta", "x") != ""
    added = {
        e["item"]["id"]: e["output_index"]
        for e in events
        if e["type"] == "response.output_item.added"
    }
    done = {e["item"]["id"]: e["item"] for e in events if e["type"] == "response.output_item.done"}
    assert set(added) == set(done)
    assert list(added.values()) == list(range(len(added)))
    prefixes = {"message": "msg_", "reasoning": "rs_", "function_call": "fc_"}
    assert all(item["id"].startswith(prefixes[item["type"]]) for item in done.values())
    final = events[-1]["response"]
    assert final["output"] == [done[i] for i in added]
    Response.model_validate(final)


def test_text_stream_exactly() -> None:
    """The whole text lifecycle, field by field, as OpenAI's own stream shapes it."""
    events = run(
        SCENARIOS["text, usage late"],
        request={"input": "hi", "instructions": "Be brief.", "temperature": 0.5},
    )
    msg = events[2]["item"]["id"]
    part = {"type": "output_text", "annotations": [], "logprobs": []}
    at = {"item_id": msg, "output_index": 0, "content_index": 0}
    item = {
        "id": msg,
        "type": "message",
        "status": "completed",
        "content": [{**part, "text": "Hello"}],
        "role": "assistant",
    }
    response = {
        "id": "resp_test",
        "object": "response",
        "created_at": 1700000000,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": "Be brief.",
        "max_output_tokens": None,
        "model": "public",
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 0.5,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": {},
    }
    assert events == [
        {"type": "response.created", "sequence_number": 0, "response": response},
        {"type": "response.in_progress", "sequence_number": 1, "response": response},
        {
            "type": "response.output_item.added",
            "sequence_number": 2,
            "output_index": 0,
            "item": {**item, "status": "in_progress", "content": []},
        },
        {
            "type": "response.content_part.added",
            "sequence_number": 3,
            **at,
            "part": {**part, "text": ""},
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 4,
            **at,
            "delta": "Hel",
            "logprobs": [],
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 5,
            **at,
            "delta": "lo",
            "logprobs": [],
        },
        {
            "type": "response.output_text.done",
            "sequence_number": 6,
            **at,
            "text": "Hello",
            "logprobs": [],
        },
        {
            "type": "response.content_part.done",
            "sequence_number": 7,
            **at,
            "part": {**part, "text": "Hello"},
        },
        {
            "type": "response.output_item.done",
            "sequence_number": 8,
            "output_index": 0,
            "item": item,
        },
        {
            "type": "response.completed",
            "sequence_number": 9,
            "response": {**response, "status": "completed", "output": [item], "usage": USAGE},
        },
    ]


# Keys of each event in a real OpenAI Responses stream (tests/vectors/openai_responses_stream.sse
# in the lead's tree, gpt-4-turbo, 2025-06): ours carry the same, plus the newer `logprobs`.
REAL_KEYS = {
    "response.created": {"type", "sequence_number", "response"},
    "response.output_item.added": {"type", "sequence_number", "output_index", "item"},
    "response.content_part.added": {
        "type",
        "sequence_number",
        "item_id",
        "output_index",
        "content_index",
        "part",
    },
    "response.output_text.delta": {
        "type",
        "sequence_number",
        "item_id",
        "output_index",
        "content_index",
        "delta",
    },
    "response.output_text.done": {
        "type",
        "sequence_number",
        "item_id",
        "output_index",
        "content_index",
        "text",
    },
    "response.completed": {"type", "sequence_number", "response"},
}
REAL_RESPONSE_KEYS = {
    "id", "object", "created_at", "status", "background", "error", "incomplete_details", "instructions",
    "max_output_tokens", "model", "output", "parallel_tool_calls", "previous_response_id", "reasoning",
    "service_tier", "store", "temperature", "text", "tool_choice", "tools", "top_p", "truncation", "usage",
    "user", "metadata",
}  # fmt: skip


def test_keys_match_a_real_openai_stream() -> None:
    events = {e["type"]: e for e in run(SCENARIOS["text, usage late"])}
    for kind, keys in REAL_KEYS.items():
        assert set(events[kind]) - {"logprobs"} == keys, kind
    # service_tier is left out: the upstream's tier is not OpenAI's.
    assert set(events["response.completed"]["response"]) == REAL_RESPONSE_KEYS - {"service_tier"}


def test_late_usage_is_on_the_final_event_only() -> None:
    stream = ResponsesStream(response_id="resp_test", model="public", request=REQUEST, created_at=1)
    stream.start()
    stream.feed(ROLE)
    stream.feed(chunk({"content": "Hi"}))
    on_finish_chunk = stream.feed(chunk({}, "stop"))
    assert [e["type"] for e in on_finish_chunk] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert stream.usage is None
    assert stream.feed(usage_chunk()) == []
    assert stream.usage == usage_chunk()["usage"]
    final = stream.finish()
    assert [e["type"] for e in final] == ["response.completed"]
    assert final[0]["response"]["usage"] == USAGE


def test_incomplete_reasons_and_usage() -> None:
    length = run(SCENARIOS["length"])[-1]["response"]
    assert length["incomplete_details"] == {"reason": "max_output_tokens"}
    assert length["usage"] == USAGE
    assert length["output"][0]["status"] == "incomplete"
    assert run(SCENARIOS["content_filter"])[-1]["response"]["incomplete_details"] == {
        "reason": "content_filter"
    }
    assert run(SCENARIOS["content_filter"])[-1]["response"]["usage"] is None


def test_failure_mid_stream() -> None:
    chunks = [
        ROLE,
        chunk({"content": "Hel"}),
        chunk({"tool_calls": [call(0, "f", "{")]}),
        usage_chunk(),
    ]
    events = run(chunks, failure=UpstreamTimeout("The upstream went silent for 30s."))
    assert brief(events) == [
        *LIFECYCLE_START,
        (2, "response.output_item.added", "msg_1", ("in_progress", None, None)),
        (3, "response.content_part.added", "msg_1", ("output_text", "")),
        (4, "response.output_text.delta", "msg_1", "Hel"),
        (5, "response.output_text.done", "msg_1", "Hel"),
        (6, "response.content_part.done", "msg_1", ("output_text", "Hel")),
        (7, "response.output_item.done", "msg_1", ("completed", None, None)),
        (8, "response.output_item.added", "fc_1", ("in_progress", "f", "")),
        (9, "response.function_call_arguments.delta", "fc_1", "{"),
        (10, "response.function_call_arguments.done", "fc_1", "{"),
        (11, "response.output_item.done", "fc_1", ("incomplete", "f", "{")),
        (12, "response.failed", None, "failed"),
    ]
    failed = events[-1]["response"]
    assert failed["error"] == {
        "code": "server_error",
        "message": "The upstream went silent for 30s.",
    }
    assert [item["status"] for item in failed["output"]] == ["completed", "incomplete"]
    assert failed["usage"] == USAGE  # what was known when it failed
    assert "error" not in {e["type"] for e in events}  # no separate error event: see the module doc
    Response.model_validate(failed)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UpstreamError("x"), "server_error"),
        (UpstreamError("slow down", status=429, code="rate_limit"), "rate_limit_exceeded"),
        (ProxyError("bad", code="invalid_prompt", status=400), "invalid_prompt"),
        (UpstreamTimeout("x"), "server_error"),
    ],
)
def test_failure_codes_are_ones_openai_python_accepts(error: ProxyError, code: str) -> None:
    events = run([], failure=error)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.failed",
    ]
    assert events[-1]["response"]["error"]["code"] == code
    assert events[-1]["response"]["usage"] is None
    Response.model_validate(events[-1]["response"])


def test_no_empty_events_and_ordinary_edges() -> None:
    stream = ResponsesStream(response_id="resp_test", model="public", request=REQUEST, created_at=1)
    assert [e["type"] for e in stream.feed(ROLE)] == [
        "response.created",
        "response.in_progress",
    ]  # start implied
    assert stream.start() == []
    assert not stream.content_started
    assert stream.feed(chunk({"content": "", "reasoning_content": ""})) == []
    assert (
        stream.feed({"choices": [{"index": 1, "delta": {"content": "n=2"}}]}) == []
    )  # only choice 0
    assert stream.feed({"choices": None, "usage": None}) == []
    assert len(stream.feed(chunk({"content": "a"}))) == 3
    assert stream.content_started
    final = stream.finish()
    assert final[-1]["sequence_number"] == 8
    assert (
        stream.finish() == []
        and stream.fail(UpstreamError("late")) == []
        and stream.feed(ROLE) == []
    )


def test_tool_call_named_late_and_calls_without_index() -> None:
    late = run(
        [
            chunk(
                {"tool_calls": [{"index": 0, "id": "call_x", "function": {"arguments": '{"a"'}}]}
            ),
            chunk({"tool_calls": [call(0, "f", ":1}")]}),
            chunk({}, "tool_calls"),
        ]
    )
    assert brief(late)[2:5] == [
        (2, "response.output_item.added", "fc_1", ("in_progress", "f", "")),
        (3, "response.function_call_arguments.delta", "fc_1", '{"a":1}'),
        (4, "response.function_call_arguments.done", "fc_1", '{"a":1}'),
    ]
    assert late[-1]["response"]["output"][0]["call_id"] == "call_x"
    whole = [
        {"id": "c1", "function": {"name": "f", "arguments": {"x": 1}}},
        {"id": "c2", "function": {"name": "g", "arguments": "{}"}},
    ]
    output = run([chunk({"tool_calls": whole}, "tool_calls")])[-1]["response"]["output"]
    assert [(i["call_id"], i["name"], i["arguments"]) for i in output] == [
        ("c1", "f", '{"x":1}'),
        ("c2", "g", "{}"),
    ]
    repeated = [
        chunk({"tool_calls": [call(0, "f", part, "call_same")]}) for part in ('{"a"', ":1}")
    ]
    output = run([*repeated, chunk({}, "tool_calls")])[-1]["response"]["output"]
    assert [(i["call_id"], i["name"], i["arguments"]) for i in output] == [
        ("call_same", "f", '{"a":1}')
    ]
    unnamed = run(
        [chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}, "tool_calls")]
    )[-1]["response"]["output"]
    assert unnamed[0]["call_id"].startswith("call_") and unnamed[0]["arguments"] == "{}"


def test_response_echoes_the_request() -> None:
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}]
    request = {
        "input": "hi",
        "instructions": "Be brief.",
        "max_output_tokens": 99,
        "tools": tools,
        "tool_choice": "required",
        "temperature": 0.1,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "text": {"format": {"type": "json_object"}},
        "reasoning": {"effort": "low", "summary": None},
        "metadata": {"k": "v"},
        "user": "u1",
        "store": True,
        "truncation": "auto",
    }
    response = run(SCENARIOS["text, usage late"], request=request)[-1]["response"]
    for key in (
        "instructions",
        "max_output_tokens",
        "tools",
        "tool_choice",
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "text",
        "reasoning",
        "metadata",
        "user",
        "truncation",
    ):
        assert response[key] == request[key], key
    assert response["store"] is False  # the proxy stores nothing
    Response.model_validate(response)


def test_usage_conversion() -> None:
    assert responses_usage(None) is None
    assert responses_usage(
        {
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        }
    ) == {
        "input_tokens": 3,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 7,
    }
    full = {
        **usage_chunk()["usage"],
        "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 1},
    }
    assert responses_usage(full) == {
        **USAGE,
        "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 1},
    }


def test_new_response_id() -> None:
    first, second = new_response_id(), new_response_id()
    assert first.startswith("resp_") and len(first) == 53 and first != second
    assert all(c in "0123456789abcdef" for c in first[5:])


# --- non-stream -----------------------------------------------------------------------------


def completion(message: Json, finish: str = "stop", usage: Json | None = None) -> Json:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        "usage": usage,
    }


def test_response_from_completion() -> None:
    message = {
        "content": "Calling.",
        "reasoning_content": "Need weather.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    response = response_from_completion(
        completion(message, "tool_calls", usage_chunk()["usage"]),
        response_id="resp_1",
        model="public",
        request=REQUEST,
        created_at=5,
    )
    parsed = Response.model_validate(response)
    assert (parsed.id, parsed.object, parsed.status, parsed.model, parsed.created_at) == (
        "resp_1",
        "response",
        "completed",
        "public",
        5,
    )
    assert "output_text" not in response  # an SDK convenience, not part of the wire object
    assert [item["type"] for item in response["output"]] == [
        "reasoning",
        "message",
        "function_call",
    ]
    assert response["output"][0]["content"] == [{"type": "reasoning_text", "text": "Need weather."}]
    assert parsed.output_text == "Calling."
    assert (
        response["output"][2]["call_id"] == "call_1"
        and response["output"][2]["name"] == "get_weather"
    )
    assert response["usage"] == USAGE
    assert all(item["status"] == "completed" for item in response["output"])


def test_response_from_completion_incomplete_and_bare() -> None:
    cut = response_from_completion(
        completion({"content": "Hel"}, "length"),
        response_id="resp_1",
        model="public",
        request=REQUEST,
        created_at=5,
    )
    assert (cut["status"], cut["incomplete_details"], cut["usage"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
        None,
    )
    assert cut["output"][0]["status"] == "incomplete"
    Response.model_validate(cut)
    empty = response_from_completion(
        {"choices": []}, response_id="resp_1", model="public", request=REQUEST, created_at=5
    )
    assert (empty["status"], empty["output"]) == ("completed", [])


# --- the real SDK reads our events ----------------------------------------------------------


def frames(events: list[Json]) -> bytes:
    """Each event framed as OpenAI frames it: ``event: <type>`` then ``data: <json>``."""
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    )


def sdk(body: bytes, content_type: str = "text/event-stream; charset=utf-8") -> openai.OpenAI:
    """An openai client whose every request is answered with ``body``, in 7-byte pieces."""
    hx: ModuleType
    try:
        import httpx2 as hx  # openai >= 3 ships its own httpx fork
    except ImportError:  # pragma: no cover - openai 1.x/2.x
        hx = httpx

    class Body(hx.SyncByteStream):  # type: ignore[misc,name-defined,unused-ignore]
        def __iter__(self) -> Any:
            for i in range(0, len(body), 7):
                yield body[i : i + 7]

    def handler(request: Any) -> Any:
        return hx.Response(200, headers={"content-type": content_type}, stream=Body())

    return openai.OpenAI(
        base_url="http://test/v1",
        api_key="x",
        max_retries=0,
        http_client=hx.Client(transport=hx.MockTransport(handler)),
    )


@pytest.mark.parametrize("name", SCENARIOS)
def test_sdk_create_stream_parses_every_event(name: str) -> None:
    events = run(SCENARIOS[name])
    received = list(sdk(frames(events)).responses.create(model="public", input="hi", stream=True))
    assert [(e.type, e.sequence_number) for e in received] == [
        (e["type"], e["sequence_number"]) for e in events
    ]
    assert [type(e) for e in received] == [type(EVENTS.validate_python(e)) for e in events]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("text, usage late", "Hello"),
        ("reasoning then text", "Hello"),
        ("text then a tool call", "Let me check."),
        ("no usage at all", "Hello"),
    ],
)
def test_sdk_stream_helper_accumulates(name: str, text: str) -> None:
    client = sdk(frames(run(SCENARIOS[name])))
    deltas: list[str] = []
    with client.responses.stream(model="public", input="hi") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert "".join(deltas) == text
    assert final.output_text == text
    assert final.status == "completed"
    assert (final.usage is None) == (name == "no usage at all")


def test_sdk_stream_helper_parses_parallel_function_calls() -> None:
    client = sdk(frames(run(SCENARIOS["two parallel tool calls interleaved by index"])))
    with client.responses.stream(model="public", input="hi") as stream:
        final = stream.get_final_response()
    assert [item.type for item in final.output] == ["function_call", "function_call"]
    calls = [(i.call_id, i.name, i.arguments) for i in final.output if i.type == "function_call"]
    assert calls == [
        ("call_get_weather", "get_weather", '{"city":"Paris"}'),
        ("call_get_time", "get_time", '{"tz":"UTC"}'),
    ]
    assert final.usage is not None and final.usage.total_tokens == 12


def test_sdk_sees_incomplete_and_failed_as_terminal_events() -> None:
    with sdk(frames(run(SCENARIOS["length"]))).responses.stream(
        model="public", input="hi"
    ) as stream:
        last = list(stream)[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.usage is not None and last.response.usage.output_tokens == 7
    failed = run(
        [ROLE, chunk({"content": "Hel"})], failure=UpstreamError("Upstream connection reset.")
    )
    received = list(sdk(frames(failed)).responses.create(model="public", input="hi", stream=True))
    assert received[-1].type == "response.failed"
    assert received[-1].response.error is not None
    assert (received[-1].response.error.code, received[-1].response.error.message) == (
        "server_error",
        "Upstream connection reset.",
    )


def test_sdk_yields_an_error_event_instead_of_raising() -> None:
    """Why fail() sends no `error` event: openai-python yields it like any event (it has no
    top-level `error` key to raise on), so only `response.failed` marks the end for clients."""
    events = run([ROLE], failure=UpstreamError("x"))[:-1]
    events.append(
        {
            "type": "error",
            "sequence_number": len(events),
            "code": "server_error",
            "message": "x",
            "param": None,
        }
    )
    received = list(sdk(frames(events)).responses.create(model="public", input="hi", stream=True))
    assert received[-1].type == "error"


def test_sdk_reads_a_non_stream_response() -> None:
    body = response_from_completion(
        completion({"content": "Hello"}, usage=usage_chunk()["usage"]),
        response_id="resp_1",
        model="public",
        request={"input": "hi"},
        created_at=5,
    )
    response = sdk(orjson.dumps(body), "application/json").responses.create(
        model="public", input="hi"
    )
    assert (response.id, response.output_text, response.status) == ("resp_1", "Hello", "completed")
    assert response.usage is not None and response.usage.input_tokens_details.cached_tokens == 2


def test_function_call_round_trip() -> None:
    """A call streamed out, then sent back with its output as the next request's input."""
    client = sdk(frames(run(SCENARIOS["text then a tool call"])))
    with client.responses.stream(model="public", input="Weather in Paris?") as stream:
        final = stream.get_final_response()
    history = [item.model_dump(exclude_none=True) for item in final.output]
    call_id = history[1]["call_id"]
    follow_up = {
        "model": "public",
        "input": [
            {"role": "user", "content": "Weather in Paris?"},
            *history,
            {"type": "function_call_output", "call_id": call_id, "output": '{"temp":18}'},
        ],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
    }
    assert chat_request(follow_up)["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": '{"temp":18}'},
    ]


def test_the_proxy_package_under_test_is_this_tree() -> None:
    """The tests exercise the modules next to them, not another checkout's installed copy."""
    import proxy.formats.responses

    assert Path(proxy.formats.responses.__file__).parents[2] == Path(__file__).parents[1]
