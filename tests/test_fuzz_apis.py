"""Property-based fuzzing of /v1/responses, /v1/completions and /v1/embeddings (hypothesis),
over a real socket, as ``test_fuzz.py`` does for chat: every answer to a malformed request is
a 4xx in OpenAI's error shape, never a 5xx or a traceback, nothing logged at ERROR, and a
stream that was accepted ends as its API ends it."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_fuzz import FUZZ, anything, check, client, no_errors_logged

__all__ = ["client", "no_errors_logged"]  # the fixtures, used by name
SOME = settings(FUZZ, max_examples=300)

texts = st.sampled_from(["hi", "", "one two"]) | st.text(max_size=8)
tokens = st.lists(st.integers(min_value=-2, max_value=2**40), max_size=4)
prompts = texts | st.lists(texts | tokens, max_size=3) | tokens | anything
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "input_image", "refusal", "x"])},
    optional={"text": anything, "image_url": anything, "file_id": anything},
)
items = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(
            ["message", "function_call", "function_call_output", "reasoning", "item_reference"]
        )
        | anything,
        "role": st.sampled_from(["user", "assistant", "developer", "system", "bot"]) | anything,
        "content": texts | st.lists(parts, max_size=3) | anything,
        "call_id": texts | anything,
        "name": texts,
        "arguments": texts | anything,
        "output": texts | anything,
    },
)
tools = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["function", "web_search", "mcp"]) | anything},
        optional={"name": texts | anything, "parameters": anything},
    )
    | anything,
    max_size=2,
)
responses_bodies = st.fixed_dictionaries(
    {"model": st.just("echo")},
    optional={
        "input": texts | st.lists(items | anything, max_size=4) | anything,
        "instructions": texts | anything,
        "stream": st.booleans() | anything,
        "tools": tools | anything,
        "tool_choice": st.sampled_from(["auto", "none", "required"]) | anything,
        "max_output_tokens": st.integers(min_value=-2, max_value=2**40) | anything,
        "text": st.fixed_dictionaries({}, optional={"format": anything}) | anything,
        "reasoning": st.fixed_dictionaries({}, optional={"effort": anything}) | anything,
        "previous_response_id": texts | anything,
        "background": anything,
        "temperature": anything,
    },
)
completion_bodies = st.fixed_dictionaries(
    {"model": st.just("echo")},
    optional={
        "prompt": prompts,
        "stream": st.booleans() | anything,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": anything})
        | anything,
        "max_tokens": st.integers(min_value=-2, max_value=2**40) | anything,
    },
)
embedding_bodies = st.fixed_dictionaries(
    {"model": st.just("echo")},
    optional={
        "input": prompts,
        "encoding_format": st.sampled_from(["float", "base64", "int8"]) | anything,
        "dimensions": st.integers(min_value=-2, max_value=2**40) | anything,
    },
)


def post(client: tuple[httpx.Client, str], path: str, body: Any) -> httpx.Response:
    http, url = client
    response = http.post(f"{url}{path}", content=json.dumps(body).encode())
    check(response)
    return response


@SOME
@given(body=responses_bodies)
def test_responses_bodies(client: tuple[httpx.Client, str], body: dict[str, Any]) -> None:
    response = post(client, "/v1/responses", body)
    if response.status_code == 200 and body.get("stream") is True:
        last = response.text.rstrip("\n").split("\n")[-1]
        assert json.loads(last[6:])["type"] in ("response.completed", "response.incomplete")


@SOME
@given(body=completion_bodies)
def test_completion_bodies(client: tuple[httpx.Client, str], body: dict[str, Any]) -> None:
    response = post(client, "/v1/completions", body)
    if response.status_code == 200 and body.get("stream") is True:
        assert response.text.endswith("data: [DONE]\n\n")


@SOME
@given(body=embedding_bodies)
def test_embedding_bodies(client: tuple[httpx.Client, str], body: dict[str, Any]) -> None:
    response = post(client, "/v1/embeddings", body)
    if response.status_code == 200:
        assert response.json()["object"] == "list"
